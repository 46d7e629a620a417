"""Successive halving inside a population: at each rung, the best 1/reduction_factor of a
cell's live members go on, the others stop.

ASHA (``scheduler.py``, the K = 1 path) decides on each result as it arrives, so its outcome
depends on arrival order and the first trial of a cell can never be stopped (it meets empty
rungs). Inside a population every member of a cell reaches a rung at the same step, so the rung
is decided on all of them at once: no trial is exempt, and a kill and resume, at any
concurrency, makes the same decisions. Ties go to the member listed first.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tuner.core.loop import Progress
from tuner.service.objective import Objective


def rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Steps at which members are compared: grace_period * rf^k below the full budget."""
    out, step = [], float(grace_period)
    while step < max_t - 1e-9:
        out.append(round(step))
        step *= reduction_factor
    return out


def keep_count(n: int, reduction_factor: float) -> int:
    """Members of a cell that go on from a rung of ``n``: the top 1/rf, at least one."""
    return max(1, math.ceil(n / reduction_factor - 1e-9))


@dataclasses.dataclass(frozen=True)
class SuccessiveHalving:
    """The population's halving rule (picklable: it travels in the trial's config).

    Args:
        cells: Member i's cell: members are compared within their cell only.
        metric, mode: What ranks members ("min": lower is better).
        grace_period, reduction_factor, max_t: The rungs (:func:`rungs`).
    """

    cells: tuple[str, ...]
    metric: str
    mode: str
    grace_period: int
    reduction_factor: float
    max_t: int

    def __call__(self, step: int, previous: int, progress: Progress) -> set[int]:
        """Members to stop at an evaluation at ``step`` (the one before was at ``previous``):
        those whose metric is not finite at once (diverged: they never enter a rung, as ASHA's
        scheduler stops them), the rest only where a rung lies in (previous, step]."""
        objective = self.objective
        stop = {i for i in progress.alive
                if _score(objective, progress.last[i], self.metric) == -math.inf}
        if not any(previous < r <= step for r in rungs(self.grace_period,
                                                       self.reduction_factor, self.max_t)):
            return stop
        for cell in dict.fromkeys(self.cells):
            live = [i for i in progress.alive if self.cells[i] == cell and i not in stop]
            ranked = sorted(live, key=lambda i: (-_score(objective, progress.last[i], self.metric),
                                                 i))
            stop |= set(ranked[keep_count(len(live), self.reduction_factor):])
        return stop

    @property
    def objective(self) -> Objective:
        return Objective(self.metric, self.mode)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"cells": list(self.cells)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SuccessiveHalving:
        return SuccessiveHalving(**(d | {"cells": tuple(d["cells"])}))


def _score(objective: Objective, metrics: dict[str, Any], metric: str) -> float:
    value = metrics.get(metric)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return objective.score(value) if math.isfinite(value) else -math.inf


def member_steps(k: int, grace_period: int, reduction_factor: float, max_t: int) -> int:
    """Steps a population of ``k`` members of one cell trains in all (none diverging): what the
    pilot projects and the search-quality benchmark counts as compute."""
    total, alive, start = 0, k, 0
    for r in rungs(grace_period, reduction_factor, max_t):
        total += alive * (r - start)
        alive, start = keep_count(alive, reduction_factor), r
    return total + alive * (max_t - start)
