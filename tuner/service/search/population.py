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
Invariants across a driver kill and ``Tuner.restore`` (as the K = 1 searcher's, through the
machinery both share, :mod:`tuner.service.search.cell_searcher`): every cell asks exactly
``trials_per_cell`` trials; members asked after the last snapshot (so unknown to the restored
run) are handed out again together, as the same population (training is a pure function of the
members, so it reaches the same results); a member told before the kill is not told again. A
kill inside ``suggest`` leaves a wave asked in part (some members of a cell, or the first cells
of a shared group), a trial asked but not yet tagged with its wave, or one enqueued but not yet
asked: the next ``suggest`` adopts the untagged trial, lets the enqueued one be asked, and asks
the rest, each from the same history as without the kill (``tests/test_population_search.py``
kills at each of these points).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tuner.service import trial_spec
from tuner.service.objective import is_finite
from tuner.service.search import results
from tuner.service.search.cell_searcher import CellSearcher, Ended, default_startup, ended, validate
from tuner.service.search.halving import SuccessiveHalving
from tuner.service.search.pick import PICKS, pick_rate
from tuner.service.search.scheduler import StopTold
from tuner.service.trial_spec import Worker, member_key

logger = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class Held:
    """What one Tune trial of the search holds: a population of ``wave``, the program group
    it trains, and its members (cell, Optuna trial number) in the order they train."""

    wave: int
    group: int
    members: tuple[tuple[str, int], ...]


class PopulationSearcher(CellSearcher):
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
        pick: How :meth:`best_per_cell` chooses a cell's rate: "fit" (a parabola in log lr
            through every member's value, pooled with the grid neighbours':
            :mod:`tuner.service.search.pick`) or "survivor" (the best full-budget member).
    """

    def __init__(self, cells: dict[str, dict], coords: dict[str, tuple[int, ...]],
                 groups: Sequence[Sequence[str]], trials_per_cell: int, population: int,
                 lr_low: float, lr_high: float, metric: str, mode: str, max_t: int,
                 grace_period: int, reduction_factor: float, study_dir: str | Path,
                 worker: Worker, seed: int = 0,
                 max_running: Callable[[], int] | None = None,
                 scheduler: StopTold | None = None, pick: str = "fit") -> None:
        super().__init__(metric=metric, mode=mode)
        validate(cells, trials_per_cell, lr_low, lr_high, mode)
        if not 1 <= population <= trials_per_cell:
            raise ValueError(f"population must be in 1..trials_per_cell={trials_per_cell}, "
                             f"got {population}")
        if pick not in PICKS:
            raise ValueError(f"pick={pick!r}; allowed: {list(PICKS)}")
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
        self._scheduler = scheduler  # stops trials told after the snapshot (set_state)
        self._pick = pick
        self._n_startup = default_startup(trials_per_cell)
        # saved in snapshots (as [wave, group, [[cell, number], ...]]); ids ended
        self._assigned: dict[str, Held] = {}
        self._done: set[str] = set()
        self._studies = self._open_studies()

    # ----------------------------------------------------------------- Tune hooks
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode are the constructor's (see PerCellSearcher)

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next population of the open wave, None while the wave's last populations run
        (or the cap holds), ``FINISHED`` once every wave is told."""
        if trial_id in self._assigned:
            held = self._assigned[trial_id]
            return self._config(held.wave, held.members)
        wave = self._open_wave()
        if wave is None:
            return Searcher.FINISHED
        if self._max_running is not None and len(self._running()) >= self._max_running():
            return None
        held = {(h.wave, h.group) for h in self._assigned.values()}
        for g, cells in enumerate(self._groups):
            if (wave, g) in held:
                continue
            members = self._wave_members(wave, g)
            if len(members) == len(cells) * self._sizes[wave] and all(
                    self._studies[c].frozen(n).state.is_finished() for c, n in members):
                continue  # ended in the journals before a kill; nothing to train
            # asked in full, or topped up where a kill cut the asks short (module docstring)
            members = tuple((c, n) for c in cells for n in self._fill(c, wave, g))
            for c, n in members:
                self._studies[c].tag(n, trial_id)
            _at("handed")
            self._assigned[trial_id] = Held(wave, g, members)
            return self._config(wave, members)
        return None

    def set_state(self, state: dict[str, Any]) -> set[str]:
        """The snapshot (:meth:`CellSearcher.set_state`); a trial whose members were all told
        after it is stopped at its first resumed result (``StopTold``)."""
        told_since = super().set_state(state)
        scheduler = getattr(self, "_scheduler", None)  # none in snapshots of earlier versions
        if scheduler is not None:
            scheduler.stop_at_next_result(told_since)
        return told_since

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Tells each member's Optuna trial what the population reported for it."""
        if trial_id not in self._assigned or trial_id in self._done:
            return
        step = result.get("step")
        if step is None:
            return
        for j, (cell, number) in enumerate(self._assigned[trial_id].members):
            if result.get(member_key(j, "step")) != step:
                continue  # ended at an earlier evaluation
            if self._studies[cell].frozen(number).state.is_finished():
                continue
            value = result.get(member_key(j, self._metric))
            # a NaN loss, or a NaN evaluation of a finite loss: diverged (as the one-rate path)
            outcome = ended(value, step, self._max_t, bool(result.get(member_key(j, "diverged"))))
            if is_finite(value):
                self._studies[cell].report(number, int(step), float(value))
            if outcome.state == TrialState.COMPLETE or outcome.diverged_at is not None \
                    or result.get(member_key(j, "stopped")):
                self._tell(cell, number, outcome)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """The last result first (Tune passes it here only); members still open then FAIL
        (the trial raised) or PRUNED (it ended early)."""
        if trial_id not in self._assigned or trial_id in self._done:
            return
        if result is not None:
            self.on_trial_result(trial_id, result)
        self._done.add(trial_id)
        for cell, number in self._assigned[trial_id].members:
            if not self._studies[cell].frozen(number).state.is_finished():
                failed = error or result is None
                self._tell(cell, number, Ended(TrialState.FAIL if failed else TrialState.PRUNED))

    def _members(self, trial_id: str) -> list[tuple[str, int]]:
        return list(self._assigned[trial_id].members)

    def _assigned_state(self, held: Held) -> list:
        return [held.wave, held.group, [list(m) for m in held.members]]

    def _assigned_of(self, raw: list) -> Held:
        wave, group, members = raw
        return Held(int(wave), int(group), tuple((str(c), int(n)) for c, n in members))

    # ----------------------------------------------------------------- for the stages
    @property
    def scheduler(self) -> None:
        return None  # halving happens inside the trials

    def best_per_cell(self) -> dict[str, dict[str, Any] | None]:
        """Per cell the best full-budget member (:func:`results.best_trial`: ``value`` and
        ``trial_number`` stay that member's, what the search measured), its ``lr`` replaced
        by the fitted pick where ``pick`` is "fit" (``pick``: how it was found,
        ``survivor_lr``: the member's rate). A cell none of whose members ran the full
        budget stays None (the search failed there). A pure function of the journals, so a
        resumed search picks what an uninterrupted one would."""
        best = super().best_per_cell()
        if getattr(self, "_pick", "fit") != "fit":  # snapshots of earlier versions: the default
            return best
        seen = {c: self._seen(c) for c in self._studies}
        out: dict[str, dict[str, Any] | None] = {}
        for cell, b in best.items():
            if b is None:
                out[cell] = None
                continue
            near = [seen[n] for n in self._neighbours.get(cell, []) if n in seen]
            p = pick_rate(*seen[cell], self._lr_low, self._lr_high, self._mode, neighbours=near)
            out[cell] = {**b, "lr": p.lr, "at_edge": results.edge(p.lr, self._lr_low,
                                                                  self._lr_high),
                         "pick": p.how, "survivor_lr": b["lr"]}
        return out

    def _seen(self, cell: str) -> tuple[list[float], list[dict[int, float]]]:
        """A cell's members' rates and reported values per step, as its journal holds them."""
        trials = [t for t in self._studies[cell].trials() if "lr" in t.params]
        return ([float(t.params["lr"]) for t in trials],
                [dict(t.intermediate_values) for t in trials])

    # ----------------------------------------------------------------- helpers
    def _config(self, wave: int, members: Sequence[tuple[str, int]]) -> dict[str, Any]:
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

    def _fill(self, cell: str, wave: int, group: int) -> list[int]:
        """The cell's members of ``wave``, asked up to the wave's size: those the journal holds
        (tagged with the wave), then a trial a kill left untagged (asked, or enqueued and not
        yet asked), then new asks. Member j is asked from the same history whether or not a
        kill came in between (the plan reads waves before ``wave`` only; the sampler is
        re-seeded from the number of trials), so a topped-up wave equals an uninterrupted one."""
        size = self._sizes[wave]
        study = self._studies[cell]
        plan = self._plan(cell, wave)
        numbers = [t.number for t in study.trials() if t.user_attrs.get(WAVE_ATTR) == wave]
        for j in range(len(numbers), size):
            lr, source = plan[j] if j < len(plan) else (None, "tpe")
            strays = [t for t in self._unheld_running(cell) if WAVE_ATTR not in t.user_attrs]
            if strays:  # asked, then killed before its wave was written: adopt it
                number = strays[0].number
                logger.info("cell %s: adopting untagged optuna trial %d into wave %d", cell,
                            number, wave)
            else:
                waiting = any(t.state == TrialState.WAITING for t in study.trials())
                if lr is not None and not waiting:  # a WAITING one is this very proposal
                    study.study.enqueue_trial({"lr": lr}, skip_if_exists=False)
                    _at("enqueued")
                number, _ = study.ask_lr(self._lr_low, self._lr_high)  # takes a WAITING first
                _at("asked")
            # the wave last: a trial holding it holds its group and source too
            study.set_attrs(number, **{SOURCE_ATTR: source, GROUP_ATTR: group, WAVE_ATTR: wave})
            _at("tagged")
            numbers.append(number)
        _at("cell")
        return numbers

    def _plan(self, cell: str, wave: int) -> list[tuple[float, str]]:
        """The rates ``wave`` of ``cell`` starts from, before TPE's (module docstring): strata
        in wave 0, neighbours' best rates of earlier waves after. Reads waves before ``wave``
        only (all told once it opens), so the plan never depends on which population of
        ``wave`` finished first."""
        size = self._sizes[wave]
        lo, hi = math.log(self._lr_low), math.log(self._lr_high)
        if wave == 0:
            rng = np.random.default_rng([self._seed, list(self._cells).index(cell), 0])
            return [(math.exp(lo + (j + rng.uniform()) / size * (hi - lo)), "stratified")
                    for j in range(size)]

        def earlier(c: str) -> list:
            return [t for t in self._studies[c].trials()
                    if t.user_attrs.get(WAVE_ATTR, wave) < wave]

        tried = [math.log(t.params["lr"]) for t in earlier(cell)]
        fixed: list[tuple[float, str]] = []
        for other in self._neighbours[cell]:
            if len(fixed) >= max(1, size // 4):
                break
            best = results.best_trial(earlier(other), self.objective, self._lr_low,
                                      self._lr_high)
            if best is None:
                continue
            x = math.log(best["lr"])
            # not where this cell has a rate already (or another neighbour put one)
            gap = (hi - lo) / (4 * len(self._sizes) * size)
            if all(abs(x - y) > gap for y in tried + [math.log(f) for f, _ in fixed]):
                fixed.append((best["lr"], f"neighbour:{other}"))
        return fixed


# Tests set this to a callable that raises at a named point of ``suggest`` ("enqueued",
# "asked", "tagged", "cell", "handed"): what a driver killed there leaves in the journals.
FAULT: Callable[[str], None] | None = None


def _at(point: str) -> None:
    if FAULT is not None:
        FAULT(point)
