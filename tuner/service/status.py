"""A live status file for a running stage: its progress per cell, readable without Ray.

``status.json`` in the experiment folder says, per cell, how many trials are running and done
and the best value so far; it is rewritten (atomically) at most every ``every_s`` seconds from
the trial list Tune hands to ``on_step_end``, so it is also right after a restore. The same
counts are set as Ray metrics (:mod:`tuner.service.service_metrics`) for a cluster's Prometheus.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from tuner.service import relocate
from tuner.service.files import write_json
from tuner.service.objective import Objective
from tuner.service.service_metrics import ServiceMetrics
from tuner.service.trial_spec import TrialSpec, member_key


class StatusFile(Callback):
    """Tune callback; ``on_step_end`` (driver loop) and ``on_experiment_end`` write the file."""

    def __init__(self, path: str | Path, stage: str, cells: list[str], per_cell: int,
                 objective: Objective, every_s: float = 2.0):
        self.path = Path(path)
        self.stage, self.cells, self.per_cell = stage, list(cells), per_cell
        self.objective, self.every_s = objective, every_s
        self._last = 0.0
        self._metrics: ServiceMetrics | None = None  # made in the driver at the first write

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the run
        return {**self.__dict__, "_metrics": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "objective" not in state:  # pickled by a version that kept metric and mode apart
            state["objective"] = Objective(state.pop("metric"), state.pop("mode"))
        self.__dict__.update(state)
        self.path = relocate.here(self.path)  # a moved folder writes at its new place

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self.write(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.write(trials)

    def write(self, trials: list) -> None:
        self._last = time.monotonic()
        per_cell = {c: {"running": 0, "finished": 0, "errored": 0, "best_so_far": None}
                    for c in self.cells}
        objective = self.objective
        for t in trials:
            spec = TrialSpec.of(t.config)
            key = {"RUNNING": "running", "TERMINATED": "finished", "ERROR": "errored"}.get(
                t.status)
            result = t.last_result or {}
            for j, member in enumerate(spec.members):
                entry = per_cell.setdefault(member.cell, {"running": 0, "finished": 0,
                                                          "errored": 0, "best_so_far": None})
                if key:  # a population counts once in each of its cells
                    entry[key] += member.cell not in [m.cell for m in spec.members[:j]]
            for cell, lr, value in _values(spec, result, self.objective.metric):
                best = per_cell[cell]["best_so_far"]
                if math.isfinite(value) and objective.better(
                        value, None if best is None else best["value"]):
                    per_cell[cell]["best_so_far"] = {"value": value, "lr": lr,
                                                     "step": result.get("step")}
        done = sum(e["finished"] + e["errored"] >= self.per_cell for e in per_cell.values())
        status = {"stage": self.stage, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "metric": self.objective.metric, "cells_total": len(per_cell), "cells_done": done,
                  "trials_running": sum(e["running"] for e in per_cell.values()),
                  "trials_finished": sum(e["finished"] for e in per_cell.values()),
                  "cells": per_cell}
        write_json(self.path, status)
        if self._metrics is None:  # the experiment folder is named after the experiment
            self._metrics = ServiceMetrics(self.path.parent.name, self.stage, self.objective.metric)
        self._metrics.update(per_cell)


def _values(spec: TrialSpec, result: dict[str, Any], metric: str) -> list[tuple[str, float, float]]:
    """``(cell, lr, value)`` of what a trial's last result says about each of its cells: each
    search member's own value; for finals, the mean over the cell's seeds (a shared program's
    plain metric averages every cell's seeds, so it says nothing of one cell)."""
    if spec.stage == "final":
        by_cell: dict[str, list[float]] = {}
        for j, m in enumerate(spec.members):
            v = result.get(spec.prefix(j) + metric)
            if isinstance(v, int | float):
                by_cell.setdefault(m.cell, []).append(float(v))
        lr = {m.cell: m.lr for m in spec.members}
        return [(c, lr[c], sum(vs) / len(vs)) for c, vs in by_cell.items()
                if len(vs) == sum(m.cell == c for m in spec.members)]
    out = []
    for j, m in enumerate(spec.members):
        v = result.get(member_key(j, metric) if spec.is_population else metric)
        if isinstance(v, int | float):
            out.append((m.cell, m.lr, float(v)))
    return out
