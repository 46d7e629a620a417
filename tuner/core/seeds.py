"""Which seed trains on what: the replication policy of the search and the finals.

Seeds replicate over everything a claim generalises over (SPEC section 6), so final seed ``s``
changes three things (:func:`seed_config`):

- ``train.seed = s``: initialization and the training data stream;
- the task's system (``SYSTEM_SEED`` field of the task class, e.g. ``data.system_seed`` for the
  LDS) ``= base + 1 + s``: every seed trains on its own system draw, never the search's (``base``);
- ``train.eval_seed = FINALS_EVAL_SEED``: finals are scored on held-out data that played no part
  in choosing the learning rate.

The search trials (:func:`search_config`) use ``SEARCH_SEED``, which no final seed may take, on
the file's own system: the rate is chosen on a run disjoint from every final one.
"""

from __future__ import annotations

from data.registry import TASKS
from tuner.core.config import RunConfig, replace

SEARCH_SEED = 1_000_000  # train.seed of every search trial; final seeds lie in [0, SEARCH_SEED)
FINALS_EVAL_SEED = 2**31 - 2  # held-out key of the finals (the search's is train.eval_seed)


def system_seed_field(cfg: RunConfig) -> str | None:
    """Dotted RunConfig field that picks the task's system (None: the task has no draw)."""
    return TASKS[cfg.task].SYSTEM_SEED


def get_field(cfg: RunConfig, dotted: str):
    """The value of a dotted RunConfig field (``data.system_seed``)."""
    head, _, rest = dotted.partition(".")
    return getattr(getattr(cfg, head), rest)


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The run of final seed ``seed``: own init/data seed, own system, finals' eval key."""
    if not 0 <= seed < SEARCH_SEED:
        raise ValueError(f"final seed {seed}; allowed: 0 <= seed < {SEARCH_SEED} (the search's)")
    over = {"train.seed": seed, "train.eval_seed": FINALS_EVAL_SEED}
    if (field := system_seed_field(cfg)) is not None:
        over[field] = get_field(cfg, field) + 1 + seed
    return replace(cfg, **over)


def search_config(cfg: RunConfig) -> RunConfig:
    """The run of a search trial: the file's own system, a seed no final run uses."""
    return replace(cfg, **{"train.seed": SEARCH_SEED})
