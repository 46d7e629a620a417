"""Experiment definitions: one YAML file per experiment in ``search_spaces/``, loaded and checked
before any cluster work (a bad file fails with ``<file>:<line>: <field>: ...; allowed: ...``).

The public surface is what this module exports; the modules beside it are its parts:
``load`` (the file to an :class:`Experiment`), ``sections`` (``search``, ``asha``,
``finals``, ``resources``, ``wandb``: one frozen dataclass each, checking itself),
``lines`` (where a field was written), ``values`` (type checks), ``grid`` (fixed settings and
grid axes onto every cell's RunConfig), ``claims`` (the hypothesis's checkable claims).
"""

from tuner.core.seeds import SEARCH_SEED
from tuner.service.experiment.claims import CLAIM_KINDS, Claim
from tuner.service.experiment.grid import MAX_CELLS, cell_id
from tuner.service.experiment.lines import SearchSpaceError
from tuner.service.experiment.load import SEARCH_SPACES, Experiment, known, load, resolve
from tuner.service.experiment.sections import Asha, FieldError, Finals, Resources, Search, Wandb

__all__ = ["CLAIM_KINDS", "MAX_CELLS", "SEARCH_SEED", "SEARCH_SPACES", "Asha", "Claim",
           "Experiment", "FieldError", "Finals", "Resources", "Search", "SearchSpaceError",
           "Wandb", "cell_id", "known", "load", "resolve"]
