"""The Tune searcher of the per-cell learning-rate search: one seeded Optuna TPE study per grid
cell (:class:`tuner.service.search.study.CellStudy`) under one Tune run.

A trial's config is flat: ``{"cell": <cell id>, "lr": <float>, **<the cell's fixed settings>}``.
Each cell owns one Optuna study (study name = cell id) in its own journal file
``<study_dir>/<cell>.journal``. The journal is written as events happen, so it is the
authority on what was asked and told; the Tune snapshot (saved every few seconds) only adds
the mapping from Tune trial ids to Optuna trial numbers and the scheduler's ASHA rungs.

Invariants kept across a driver kill and ``Tuner.restore``:

* each cell asks exactly ``trials_per_cell`` Optuna trials; a trial asked after the last
  snapshot (so unknown to the restored Tune run) is handed out again to the next Tune trial
  of that cell instead of asking a new one;
* a Tune trial finishes against the Optuna trial number it was handed at ``suggest``; a
  trial that was already told in the journal before the kill is not told again;
* the scheduler's rungs are rebuilt from the journals (the one record of every result) by the
  live path, and a trial told after the snapshot is stopped at its first resumed result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from tuner.service import trial_spec
from tuner.service.objective import is_finite
from tuner.service.search.cell_searcher import CellSearcher, Ended, default_startup, ended, validate
from tuner.service.search.study import TUNE_ID_ATTR

if TYPE_CHECKING:
    from tuner.service.search.scheduler import PerCellScheduler

logger = logging.getLogger(__name__)

_WAIT = "<wait>"  # _next_cell: budget left, but the concurrency caps hold every cell back


class PerCellSearcher(CellSearcher):
    """Tune ``Searcher`` handing out one ``lr`` per trial from the study of its cell.

    Cells are served round-robin by need: ``suggest`` picks the cell with the fewest Optuna
    trials that still has budget (ties by the order of ``cells``); a cell holding an
    unclaimed trial (asked after the last snapshot of a driver that died) goes first. Trials
    that ASHA stopped early are told PRUNED (their early loss would mislead TPE); trials whose
    metric turned non-finite (diverged) PRUNED with a NaN intermediate value and the
    ``diverged`` attribute, so TPE steers away from their rates; trials that raised FAIL;
    full-budget trials COMPLETE.

    Tune hooks (through ``ConcurrencyLimiter`` when ``max_concurrent_trials`` is set, then
    ``SearchGenerator``): ``suggest`` when Tune wants a trial, ``on_trial_result`` per result,
    ``on_trial_complete`` once per trial end, ``save``/``restore`` on experiment snapshots
    (``save_to_dir``/``restore_from_dir``). Metric and mode come from the constructor: Tune
    calls ``set_search_properties`` only when ``param_space`` is non-empty.

    Restore note (Ray 2.60): ``Tuner.restore`` takes no ``tune_config``; Tune unpickles this
    object from ``tuner.pkl`` (written at ``Tuner()`` time), which re-opens the journals
    (see ``__getstate__``), then calls :meth:`restore` with the newest snapshot.

    Args:
        cells: Cell id -> what its trials carry besides cell and rate
            (:func:`tuner.service.trial_spec.search_template`). Order matters for ties.
        trials_per_cell: Optuna trials each cell asks in total.
        lr_low: Lower end of the log-uniform lr range.
        lr_high: Upper end of the log-uniform lr range.
        metric: Result key Optuna optimises.
        mode: "min" or "max".
        time_attr: Result key of progress; a trial ending before ``max_t`` was pruned.
        max_t: Full budget in ``time_attr`` units (same as the scheduler's).
        study_dir: Directory of the per-cell journals; belongs to this one experiment.
        seed: Base seed; cell i's TPE sampler is seeded from (seed, i, trials already in the
            study), so a fresh run is reproducible and a resumed one does not repeat lrs.
        scheduler: The run's :class:`PerCellScheduler`, whose rungs are saved with this
            searcher's snapshot (Tune does not save scheduler state, ray issue 30838).
        n_startup_trials: TPE random start-up trials per cell; default
            ``min(10, max(3, trials_per_cell // 3))``.
        max_running: Cap on running trials over all cells, read at every ``suggest``
            (``max_concurrent: auto``: :class:`tuner.service.concurrency.ClusterConcurrency`);
            None: Tune's ``max_concurrent_trials`` limits instead.
        per_cell_running: Cap on running trials of one cell (None: none).
    """

    def __init__(
        self,
        cells: dict[str, dict],
        trials_per_cell: int,
        lr_low: float,
        lr_high: float,
        metric: str,
        mode: str,
        time_attr: str,
        max_t: int,
        study_dir: str | Path,
        seed: int = 0,
        scheduler: PerCellScheduler | None = None,
        *,
        n_startup_trials: int | None = None,
        max_running: Callable[[], int] | None = None,
        per_cell_running: int | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        validate(cells, trials_per_cell, lr_low, lr_high, mode)
        if scheduler is not None:
            _check_scheduler_matches(scheduler, metric, mode, time_attr, max_t)
        self._cells = {str(c): dict(s) for c, s in cells.items()}
        self._trials_per_cell = trials_per_cell
        self._lr_low = float(lr_low)
        self._lr_high = float(lr_high)
        self._time_attr = time_attr
        self._max_t = max_t
        self._study_dir = Path(study_dir).absolute()
        self._seed = seed
        self._scheduler = scheduler
        self._n_startup = n_startup_trials or default_startup(trials_per_cell)
        self._max_running = max_running  # called at every suggest (the cluster may grow)
        self._per_cell_running = per_cell_running
        # Bookkeeping saved in snapshots: Tune trial id -> (cell, optuna trial number),
        # ids already told, last time_attr seen per trial.
        self._assigned: dict[str, tuple[str, int]] = {}
        self._done: set[str] = set()
        self._last_step: dict[str, float] = {}
        self._studies = self._open_studies()

    # ----------------------------------------------------------------- Tune hooks
    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Called by ``tune.run`` only for a non-empty ``param_space``; keeps the constructor's
        metric and mode (never clobbered) and lets ``param_space`` constants merge under the
        suggested config."""
        if (metric and metric != self._metric) or (mode and mode != self._mode):
            logger.warning(
                "TuneConfig metric/mode %s/%s ignored; PerCellSearcher uses %s/%s",
                metric,
                mode,
                self._metric,
                self._mode,
            )
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        """Config for a new Tune trial, or ``Searcher.FINISHED`` once every cell has asked
        ``trials_per_cell`` trials and none is left unclaimed."""
        if trial_id in self._assigned:
            cell, number = self._assigned[trial_id]
            return self._config(cell, self._studies[cell].frozen(number).params["lr"])
        cell = self._next_cell()
        if cell is None:
            return Searcher.FINISHED
        if cell == _WAIT:
            return None  # Tune asks again when a trial ends (or the cluster grows)
        study = self._studies[cell]
        orphan = self._orphans(cell)
        if orphan:
            number, lr = orphan[0].number, float(orphan[0].params["lr"])
            logger.info("cell %s: reusing unclaimed optuna trial %d for %s", cell, number, trial_id)
        else:
            number, lr = study.ask_lr(self._lr_low, self._lr_high)
        study.tag(number, trial_id)
        self._assigned[trial_id] = (cell, number)
        return self._config(cell, lr)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Reports ``result[metric]`` at step ``result[time_attr]`` to the Optuna trial."""
        if trial_id not in self._assigned or trial_id in self._done:
            return
        step = result.get(self._time_attr)
        if step is None:
            return
        self._last_step[trial_id] = float(step)
        value = result.get(self._metric)
        if is_finite(value):
            cell, number = self._assigned[trial_id]
            self._studies[cell].report(number, int(step), float(value))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Tells Optuna FAIL (error), PRUNED (diverged, or ended before max_t) or COMPLETE.

        Called once per trial end by Tune; a second call for the same id, or a trial already
        told in the journal before a driver kill, is ignored. Tune does not pass the result on
        which the scheduler said STOP (the last one, e.g. at max_t) to ``on_trial_result``
        (ray/tune/execution/tune_controller.py:1584), so it is reported here first.
        """
        if trial_id not in self._assigned:
            logger.warning("on_trial_complete for unknown trial %s ignored", trial_id)
            return
        if trial_id in self._done:
            return
        if result is not None:
            self.on_trial_result(trial_id, result)
        self._done.add(trial_id)
        cell, number = self._assigned[trial_id]
        self._tell(cell, number, self._outcome(trial_id, result, error))

    def _members(self, trial_id: str) -> list[tuple[str, int]]:
        return [self._assigned[trial_id]]

    def _assigned_state(self, held: tuple[str, int]) -> list:
        return list(held)

    def _assigned_of(self, raw: list) -> tuple[str, int]:
        return str(raw[0]), int(raw[1])

    def _extra_state(self) -> dict[str, Any]:
        """The last step seen per trial, and the scheduler's rungs (Tune does not save
        scheduler state, ray issue 30838)."""
        return {"last_step": self._last_step,
                "scheduler": self._scheduler.get_state() if self._scheduler else None}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self._last_step = {k: float(v) for k, v in state["last_step"].items()}
        if self._scheduler is not None and state["scheduler"] is not None:
            self._scheduler.set_state(state["scheduler"])

    def set_state(self, state: dict[str, Any]) -> set[str]:
        """The snapshot (:meth:`CellSearcher.set_state`), then the scheduler's rungs rebuilt
        from the journals (the one record of every result); a trial told after the snapshot
        is stopped at its first resumed result."""
        told_since = super().set_state(state)
        if self._scheduler is not None:
            histories: dict[str, dict[str, dict[float, float]]] = {}
            for cell, study in self._studies.items():
                histories[cell] = {}
                for t in study.trials():
                    tune_id = t.user_attrs.get(TUNE_ID_ATTR)
                    if tune_id:
                        histories[cell][tune_id] = dict(t.intermediate_values)
            self._scheduler.rebuild(histories)
            self._scheduler.stop_at_next_result(told_since)
        return told_since

    # ----------------------------------------------------------------- for the CLI
    @property
    def scheduler(self) -> PerCellScheduler | None:
        return self._scheduler

    # ----------------------------------------------------------------- helpers
    def _config(self, cell: str, lr: float) -> dict[str, Any]:
        return trial_spec.search_config(cell, lr, self._cells[cell])

    def _next_cell(self) -> str | None:
        """A cell holding an unclaimed trial first, else the fewest asked with budget left;
        ``_WAIT`` when caps (``max_running``, ``per_cell_running``) hold every open cell back."""
        for cell in self._cells:
            if self._orphans(cell):
                return cell
        open_cells = [
            (len(self._studies[cell].trials()), i, cell) for i, cell in enumerate(self._cells)
        ]
        open_cells = [entry for entry in open_cells if entry[0] < self._trials_per_cell]
        if not open_cells:
            return None
        running = [self._assigned[tid][0] for tid in self._running()]
        if self._max_running is not None and len(running) >= self._max_running():
            return _WAIT
        if self._per_cell_running is not None:
            open_cells = [e for e in open_cells if running.count(e[2]) < self._per_cell_running]
        return min(open_cells)[2] if open_cells else _WAIT

    def _orphans(self, cell: str) -> list[FrozenTrial]:
        """RUNNING trials of ``cell`` no Tune trial holds: asked after the last snapshot
        by a driver that then died."""
        return self._unheld_running(cell)

    def _outcome(self, trial_id: str, result: dict | None, error: bool) -> Ended:
        """How a trial that ended is told (:func:`ended`; FAIL where it raised)."""
        if error or result is None:
            return Ended(TrialState.FAIL)
        return ended(result.get(self._metric), result.get(self._time_attr,
                                                          self._last_step.get(trial_id)),
                     self._max_t)


def _check_scheduler_matches(
    scheduler: PerCellScheduler, metric: str, mode: str, time_attr: str, max_t: int
) -> None:
    theirs = (scheduler.metric, scheduler.mode, scheduler.time_attr, scheduler.max_t)
    if theirs != (metric, mode, time_attr, max_t):
        raise ValueError(
            f"scheduler metric/mode/time_attr/max_t {theirs} != searcher's "
            f"{(metric, mode, time_attr, max_t)}"
        )
