"""Which cells compile to the same program: the pilot measures one of each, and the population
search may train them in one program (``search.share_program``)."""

from __future__ import annotations

import math
from typing import Any

from tuner.core.loop import Run
from tuner.core.population import program_key
from tuner.core.seeds import search_config
from tuner.service.experiment import Experiment
from tuner.service.trials import trial_config


def shapes(exp: Experiment) -> dict[str, list[str]]:
    """Shape name (its first cell) -> the cells that compile to the same programs."""
    lr = math.sqrt(exp.search.lr_low * exp.search.lr_high)
    groups: dict[Any, list[str]] = {}
    for cell, over in exp.cells().items():
        run = Run(search_config(trial_config(exp.base, {"overrides": over, "lr": lr})))
        groups.setdefault(program_key(run), []).append(cell)
    return {cells[0]: cells for cells in groups.values()}
