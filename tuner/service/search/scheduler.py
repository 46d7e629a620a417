"""Per-cell asynchronous successive halving (ASHA) for one Tune run over a grid of cells.

One Ray Tune ``Tuner`` runs the learning-rate searches of every grid cell at once. A single
ASHA over all trials would compare a trial of one cell against trials of another cell whose
losses live on a different scale and stop the worse-scaled cell's trials wholesale. This
scheduler keeps one set of ASHA rungs per cell, so a trial is only ever compared against
trials of its own cell (``trial.config["cell"]``).

The rung logic mirrors Ray 2.60's ``ray.tune.schedulers.async_hyperband._Bracket`` with one
bracket and ``stop_last_trials=True`` (same milestones, same ``nanpercentile`` cutoff). It is
re-implemented here rather than delegated to one ``AsyncHyperBandScheduler`` per cell because
Ray's scheduler exposes its rungs only through private attributes and its ``save``/``restore``
pickle the whole object to a file, while the rungs must travel inside the searcher's snapshot
(Tune never saves scheduler state: ray issue 30838).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from tuner.service.objective import Objective, is_finite

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

_STATE_VERSION = 1


class CellRungs:
    """ASHA rungs of one cell: milestone -> {tune trial id: reward}.

    Rewards are :meth:`Objective.score` of the metric, so larger is always better, exactly as in
    Ray's ``_Bracket``. A trial is recorded at most once
    per rung; that is what keeps a restored trial, which re-reports the steps after its last
    checkpoint, from being counted twice.

    Args:
        grace_period: First milestone; no trial is stopped before it.
        max_t: Last milestone (full budget).
        reduction_factor: Spacing of milestones and the fraction kept at each rung (1/rf).
    """

    def __init__(self, grace_period: float, max_t: float, reduction_factor: float) -> None:
        self._rf = reduction_factor
        milestones = []
        milestone = float(grace_period)
        while milestone <= max_t * (1 + 1e-9):
            milestones.append(milestone)
            milestone *= reduction_factor
        # Descending, like Ray: the first milestone not above the current step is the one
        # a result belongs to.
        self._rungs: list[tuple[float, dict[str, float]]] = [(m, {}) for m in reversed(milestones)]

    def cutoff(self, recorded: dict[str, float]) -> float | None:
        """Reward a new result must reach at a rung to go on (top 1/rf of recorded ones)."""
        if not recorded:
            return None
        return float(np.nanpercentile(list(recorded.values()), (1 - 1 / self._rf) * 100))

    def on_result(self, trial_id: str, step: float, reward: float) -> str:
        """Records ``reward`` at the highest milestone <= ``step`` not yet recorded for the trial.

        Returns:
            ``TrialScheduler.STOP`` when the reward is below that rung's cutoff, else
            ``TrialScheduler.CONTINUE``.
        """
        action = TrialScheduler.CONTINUE
        for milestone, recorded in self._rungs:
            if step < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(recorded)
            if cutoff is not None and reward < cutoff:
                action = TrialScheduler.STOP
            recorded[trial_id] = reward
            break
        return action

    def summary(self) -> list[tuple[float, int]]:
        """(milestone, number of recorded values), ascending milestones."""
        return [(m, len(recorded)) for m, recorded in reversed(self._rungs)]

    def get_state(self) -> list[list[Any]]:
        """JSON-able rung contents: ``[[milestone, {trial_id: reward}], ...]`` descending."""
        return [[m, dict(recorded)] for m, recorded in self._rungs]

    def set_state(self, state: list[list[Any]]) -> None:
        """Replaces the rung contents with ``state`` from :meth:`get_state`.

        Raises:
            ValueError: if the saved milestones differ from this object's (the scheduler was
                rebuilt with a different grace_period/max_t/reduction_factor).
        """
        saved = [float(m) for m, _ in state]
        mine = [m for m, _ in self._rungs]
        if len(saved) != len(mine) or not np.allclose(saved, mine):
            raise ValueError(f"saved rung milestones {saved} != configured {mine}")
        self._rungs = [
            (m, {str(k): float(v) for k, v in rec.items()})
            for (m, _), (_, rec) in zip(self._rungs, state, strict=True)
        ]


class PerCellScheduler(FIFOScheduler):
    """One ASHA per grid cell, routed by ``trial.config["cell"]``.

    Trials run in submission order (``FIFOScheduler.choose_trial_to_run``); only the stopping
    decision is per cell. A trial reporting a non-finite metric is stopped at once and never
    enters a rung (the searcher then tells Optuna PRUNED, marked diverged).

    State that must survive a driver restart is the rung contents per cell
    (:meth:`get_state`/:meth:`set_state`). Tune does not save it, so
    :class:`tuner.service.search.searcher.PerCellSearcher` saves and restores it inside its
    own snapshot; on resume Tune calls ``Searcher.restore_from_dir`` (hence :meth:`set_state`)
    before it re-adds the restored trials with :meth:`on_trial_add`.

    Args:
        metric: Result key compared between trials.
        mode: "min" or "max".
        time_attr: Monotonic result key measuring progress (e.g. "training_iteration").
        max_t: Full budget in ``time_attr`` units; a trial reaching it is stopped (done).
        grace_period: First rung; no trial is stopped before it.
        reduction_factor: Rung spacing; the top 1/reduction_factor go on at each rung.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        time_attr: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
    ) -> None:
        super().__init__()
        if not 0 < grace_period <= max_t:
            raise ValueError(f"need 0 < grace_period <= max_t, got {grace_period}, {max_t}")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self._objective = Objective(metric, mode)
        self._metric = metric
        self._mode = mode
        self.time_attr = time_attr
        self.max_t = max_t
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self._cells: dict[str, CellRungs] = {}
        self._num_stopped: dict[str, int] = {}
        self._stop_ids: set[str] = set()

    @property
    def mode(self) -> str:
        return self._mode

    # ----------------------------------------------------------------- Tune hooks
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Called by ``tune.run`` with ``TuneConfig.metric/mode``.

        Metric and mode are fixed by the constructor; returns False (Tune raises) only when
        the TuneConfig names a different one, so the two cannot silently disagree.
        """
        return (metric is None or metric == self._metric) and (mode is None or mode == self._mode)

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        """Called by ``TuneController.add_trial`` for new trials and, on resume, for every
        restored trial, finished ones included. Rungs are keyed by trial id, so re-adding
        never double counts; finished trials are ignored."""
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        self._cell_rungs(_cell_of(trial))

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        """Called by Tune on every reported result; returns CONTINUE or STOP."""
        if trial.trial_id in self._stop_ids:
            return TrialScheduler.STOP
        if self.time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        cell = _cell_of(trial)
        value = result[self._metric]
        if not is_finite(value) or result[self.time_attr] >= self.max_t:
            action = TrialScheduler.STOP
        else:
            action = self._cell_rungs(cell).on_result(
                trial.trial_id, result[self.time_attr], self._objective.score(float(value))
            )
        if action == TrialScheduler.STOP:
            self._num_stopped[cell] = self._num_stopped.get(cell, 0) + 1
        return action

    def on_trial_complete(
        self, tune_controller: TuneController, trial: Trial, result: dict
    ) -> None:
        """Called by Tune when a trial ends (done, stopped by us, or max_t); records its last
        result so full-budget trials populate the last rung."""
        if self.time_attr not in result or self._metric not in result:
            return
        value = result[self._metric]
        if is_finite(value):
            self._cell_rungs(_cell_of(trial)).on_result(
                trial.trial_id, result[self.time_attr], self._objective.score(float(value))
            )

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        """Called by Tune for PENDING/PAUSED trials it drops; nothing is held per live trial."""

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        """Called by Tune when a trial raises; its recorded rung values stay (they were real)."""

    def debug_string(self) -> str:
        parts = [f"{c}: {self._cells[c].summary()}" for c in self._cells]
        return "PerCellScheduler (ASHA per cell) " + "; ".join(parts)

    # ----------------------------------------------------------------- state
    def rungs(self) -> dict[str, list[tuple[float, int]]]:
        """Per cell, (milestone, recorded values count), ascending milestones."""
        return {cell: rungs.summary() for cell, rungs in self._cells.items()}

    def get_state(self) -> dict[str, Any]:
        """JSON-able rung contents and stop counts per cell (saved by the searcher)."""
        return {
            "version": _STATE_VERSION,
            "cells": {
                cell: {"rungs": rungs.get_state(), "num_stopped": self._num_stopped.get(cell, 0)}
                for cell, rungs in self._cells.items()
            },
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state` output; cells not in ``state`` keep their rungs."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown scheduler state version {state.get('version')!r}")
        for cell, cell_state in state["cells"].items():
            self._cell_rungs(cell).set_state(cell_state["rungs"])
            self._num_stopped[cell] = int(cell_state["num_stopped"])

    def rebuild(self, histories: dict[str, dict[str, dict[float, float]]]) -> None:
        """Replaces the rungs of every cell in ``histories`` (cell -> Tune trial id -> step ->
        metric) by replaying each trial's results in step order through the live path
        (:meth:`CellRungs.on_result`, one milestone per result), so a restore can never fill
        the rungs differently from a live run. The searcher passes the Optuna journals: the one
        record of every result, keyed by the Tune id that now holds each Optuna trial (a trial
        handed to a new Tune id after a restart is counted once). Non-finite values never
        enter a rung, as live."""
        for cell, trials in histories.items():
            rungs = CellRungs(self.grace_period, self.max_t, self.reduction_factor)
            for trial_id, values in trials.items():
                for step in sorted(values):
                    if is_finite(values[step]):
                        rungs.on_result(trial_id, step, self._objective.score(float(values[step])))
            self._cells[cell] = rungs

    def stop_at_next_result(self, trial_ids: set[str]) -> None:
        """Trials the searcher already told finished (after Tune's last snapshot, before the
        driver stopped): Tune resumes them, they must not train on."""
        self._stop_ids |= set(trial_ids)

    def _cell_rungs(self, cell: str) -> CellRungs:
        if cell not in self._cells:
            self._cells[cell] = CellRungs(self.grace_period, self.max_t, self.reduction_factor)
        return self._cells[cell]


class StopTold(FIFOScheduler):
    """Tune's FIFO order for the population search (its trials halve their members
    themselves), and its trials that the searcher told finished after Tune's last snapshot
    stopped at their first resumed result, as :meth:`PerCellScheduler.stop_at_next_result`
    does for the one-rate search: the members are complete in the journals, nothing resumed
    of them is read."""

    def __init__(self) -> None:
        super().__init__()
        self._stop_ids: set[str] = set()

    def stop_at_next_result(self, trial_ids: set[str]) -> None:
        self._stop_ids |= set(trial_ids)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict
                        ) -> str:
        if trial.trial_id in self._stop_ids:
            self._stop_ids.discard(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def _cell_of(trial: Trial) -> str:
    try:
        return str(trial.config["cell"])
    except KeyError:
        raise KeyError(
            f"trial {trial.trial_id} has no 'cell' in its config; PerCellScheduler needs "
            "PerCellSearcher (or a config with a 'cell' key)"
        ) from None
