"""The population search: a cell's learning rates asked in waves, each wave trained as one
Tune trial per group of cells (one vmapped program, halved inside by
:class:`tuner.service.search.halving.SuccessiveHalving`), every rate still one Optuna trial in
its cell's study (``<study_dir>/<cell>.journal``, as :class:`PerCellSearcher`).

Waves make the proposals learn, and keep them independent of timing:

* wave 0 spreads ``population`` rates over the log range, one per equal stratum at a seeded
  position in it (source ``stratified``): a random start would leave gaps that a population
  can afford to cover;
* wave w > 0 starts only when every member of wave w - 1 in every cell has been told, so what
  it proposes never depends on which trial finished first. Each cell takes the best rate found
  so far by each of its grid neighbours (cells one step away along one axis; source
  ``neighbour:<cell>``; up to a quarter of the wave, the rest by TPE (source ``tpe``) from the
  cell's own study. Neighbouring cells' best rates lie within a factor of a few of each other
  (issue 24's measurements), so one proposal at a neighbour's best is the cheapest good guess.

A member's Optuna trial carries ``wave``, ``group``, ``source`` and the Tune trial id.
Invariants across a driver kill and ``Tuner.restore`` (as the K = 1 searcher's): every cell asks
exactly ``trials_per_cell`` trials; members asked after the last snapshot (so unknown to the
restored run) are handed out again together, as the same population (training is a pure
function of the members, so it reaches the same results); a member told before the kill is not
told again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tuner.service import trial_spec
from tuner.service.objective import is_finite
from tuner.service.search import results
from tuner.service.search.halving import SuccessiveHalving
from tuner.service.search.study import JournalStudies
from tuner.service.trial_spec import Worker, member_key

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
WAVE_ATTR, GROUP_ATTR, SOURCE_ATTR = "wave", "group", "source"


def wave_sizes(trials_per_cell: int, population: int) -> list[int]:
    """Members per cell in each wave: ``population`` each, the last one what is left."""
    return [min(population, trials_per_cell - w) for w in range(0, trials_per_cell, population)]


def neighbours(coords: dict[str, tuple[int, ...]]) -> dict[str, list[str]]:
    """Per cell, the cells one grid step away along one axis (in axis order, lower first)."""
    where = {c: tuple(x) for c, x in coords.items()}
    back = {x: c for c, x in where.items()}
    out = {}
    for cell, x in where.items():
        found = []
        for axis in range(len(x)):
            for d in (-1, 1):
                y = x[:axis] + (x[axis] + d,) + x[axis + 1:]
                if y in back:
                    found.append(back[y])
        out[cell] = found
    return out


class PopulationSearcher(JournalStudies, results.CellResults, Searcher):
    """Tune ``Searcher`` handing out population trials (see the module docstring).

    Args:
        cells: Cell id -> its grid overrides, in grid order.
        coords: Cell id -> its index along each grid axis (for neighbours).
        groups: Cells trained together in one program (each cell in exactly one group).
        trials_per_cell: Optuna trials each cell asks in total.
        population: Members per cell in a wave.
        lr_low, lr_high: The log-uniform range.
        metric, mode: What the search optimises.
        max_t: Full budget in steps.
        grace_period, reduction_factor: The rungs of the halving.
        study_dir: Directory of the per-cell journals.
        worker: What every trial's worker sets up before JAX starts.
        seed: Base seed of the strata positions and the TPE samplers.
        max_running: Cap on running trials, read at every ``suggest`` (None: Tune's).
    """

    def __init__(self, cells: dict[str, dict], coords: dict[str, tuple[int, ...]],
                 groups: Sequence[Sequence[str]], trials_per_cell: int, population: int,
                 lr_low: float, lr_high: float, metric: str, mode: str, max_t: int,
                 grace_period: int, reduction_factor: float, study_dir: str | Path,
                 worker: Worker, seed: int = 0,
                 max_running: Callable[[], int] | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        if sorted(c for g in groups for c in g) != sorted(cells):
            raise ValueError("every cell must be in exactly one group")
        self._cells = {str(c): dict(o) for c, o in cells.items()}
        self._neighbours = neighbours(coords)
        self._groups = [list(g) for g in groups]
        self._sizes = wave_sizes(trials_per_cell, population)
        self._lr_low, self._lr_high = float(lr_low), float(lr_high)
        self._max_t = max_t
        self._grace, self._rf = grace_period, reduction_factor
        self._study_dir = Path(study_dir).absolute()
        self._worker = worker.fields()  # a dict, as snapshots of earlier versions hold
        self._seed = seed
        self._max_running = max_running
        self._n_startup = min(10, max(3, trials_per_cell // 3))
        # saved in snapshots: Tune trial id -> [wave, group, [[cell, number], ...]]; ids ended
        self._assigned: dict[str, tuple[int, int, list[tuple[str, int]]]] = {}
        self._done: set[str] = set()
        self._studies = self._open_studies()

    # ----------------------------------------------------------------- Tune hooks
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode are the constructor's (see PerCellSearcher)

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next population of the open wave, None while the wave's last populations run
        (or the cap holds), ``FINISHED`` once every wave is told."""
        if trial_id in self._assigned:
            wave, group, members = self._assigned[trial_id]
            return self._config(wave, members)
        wave = self._open_wave()
        if wave is None:
            return Searcher.FINISHED
        running = sum(tid not in self._done for tid in self._assigned)
        if self._max_running is not None and running >= self._max_running():
            return None
        held = {(w, g) for w, g, _ in self._assigned.values()}
        for g, cells in enumerate(self._groups):
            if (wave, g) in held:
                continue
            members = self._wave_members(wave, g)
            if members and all(self._studies[c].frozen(n).state.is_finished()
                               for c, n in members):
                continue  # ended in the journals before a kill; nothing to train
            if not members:
                members = [(c, n) for c in cells for n in self._ask(c, wave, g)]
            for c, n in members:
                self._studies[c].tag(n, trial_id)
            self._assigned[trial_id] = (wave, g, members)
            return self._config(wave, members)
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Tells each member's Optuna trial what the population reported for it."""
        if trial_id not in self._assigned or trial_id in self._done:
            return
        step = result.get("step")
        if step is None:
            return
        for j, (cell, number) in enumerate(self._assigned[trial_id][2]):
            if result.get(member_key(j, "step")) != step:
                continue
            study = self._studies[cell]
            if study.frozen(number).state.is_finished():
                continue
            value = result.get(member_key(j, self._metric))
            if result.get(member_key(j, "diverged")):
                study.mark_diverged(number, int(step))
                study.tell(number, TrialState.PRUNED, None)
                continue
            if is_finite(value):
                study.report(number, int(step), float(value))
            if int(step) >= self._max_t and is_finite(value):
                study.tell(number, TrialState.COMPLETE, float(value))
            elif result.get(member_key(j, "stopped")):
                study.tell(number, TrialState.PRUNED, None)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """The last result first (Tune passes it here only); members still open then FAIL
        (the trial raised) or PRUNED (it ended early)."""
        if trial_id not in self._assigned or trial_id in self._done:
            return
        if result is not None:
            self.on_trial_result(trial_id, result)
        self._done.add(trial_id)
        for cell, number in self._assigned[trial_id][2]:
            if not self._studies[cell].frozen(number).state.is_finished():
                state = TrialState.FAIL if error or result is None else TrialState.PRUNED
                self._studies[cell].tell(number, state, None)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))

    def get_state(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "cells": list(self._cells),
                "assigned": {t: [w, g, [list(m) for m in ms]]
                             for t, (w, g, ms) in self._assigned.items()},
                "done": sorted(self._done)}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown searcher state version {state.get('version')!r}")
        if state["cells"] != list(self._cells):
            raise ValueError(f"snapshot cells {state['cells']} != {list(self._cells)}")
        self._assigned = {t: (int(w), int(g), [(c, int(n)) for c, n in ms])
                          for t, (w, g, ms) in state["assigned"].items()}
        self._done = set(state["done"])

    # ----------------------------------------------------------------- for the stages
    @property
    def scheduler(self) -> None:
        return None  # halving happens inside the trials

    # ----------------------------------------------------------------- helpers
    def _config(self, wave: int, members: list[tuple[str, int]]) -> dict[str, Any]:
        cells = [c for c, _ in members]
        halving = SuccessiveHalving(tuple(cells), self._metric, self._mode, self._grace,
                                    self._rf, self._max_t)
        return trial_spec.population_config(
            wave, [(c, n, self._studies[c].frozen(n).params["lr"]) for c, n in members],
            self._cells, halving.to_dict(), Worker.of(self._worker),
            [self._studies[c].frozen(n).user_attrs.get(SOURCE_ATTR, "") for c, n in members])

    def _wave_members(self, wave: int, group: int) -> list[tuple[str, int]]:
        return [(c, t.number) for c in self._groups[group] for t in self._studies[c].trials()
                if t.user_attrs.get(WAVE_ATTR) == wave]

    def _open_wave(self) -> int | None:
        """The first wave some cell has not finished (asked and told all of), or None."""
        for wave, size in enumerate(self._sizes):
            for study in self._studies.values():
                told = [t for t in study.trials() if t.user_attrs.get(WAVE_ATTR) == wave
                        and t.state.is_finished()]
                if len(told) < size:
                    return wave
        return None

    def _ask(self, cell: str, wave: int, group: int) -> list[int]:
        """Asks the cell's members of ``wave`` (module docstring), tagging each with its wave,
        group and source."""
        size = self._sizes[wave]
        study = self._studies[cell]
        lo, hi = math.log(self._lr_low), math.log(self._lr_high)
        fixed: list[tuple[float, str]] = []
        if wave == 0:
            rng = np.random.default_rng([self._seed, list(self._cells).index(cell), 0])
            fixed = [(math.exp(lo + (j + rng.uniform()) / size * (hi - lo)), "stratified")
                     for j in range(size)]
        else:
            tried = [math.log(t.params["lr"]) for t in study.trials()]
            for other in self._neighbours[cell]:
                if len(fixed) >= max(1, size // 4):
                    break
                best = results.best_trial(self._studies[other].trials(), self.objective,
                                          self._lr_low, self._lr_high)
                if best is None:
                    continue
                x = math.log(best["lr"])
                # not where this cell has a rate already (or another neighbour put one)
                gap = (hi - lo) / (4 * len(self._sizes) * size)
                if all(abs(x - y) > gap for y in tried + [math.log(f) for f, _ in fixed]):
                    fixed.append((best["lr"], f"neighbour:{other}"))
        numbers = []
        for j in range(size):
            if j < len(fixed):
                lr, source = fixed[j]
                study.study.enqueue_trial({"lr": lr}, skip_if_exists=False)
            else:
                source = "tpe"
            number, _ = study.ask_lr(self._lr_low, self._lr_high)
            study.set_attrs(number, **{WAVE_ATTR: wave, GROUP_ATTR: group, SOURCE_ATTR: source})
            numbers.append(number)
        return numbers
