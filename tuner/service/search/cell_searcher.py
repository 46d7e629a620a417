"""What the two Tune searchers (:class:`tuner.service.search.searcher.PerCellSearcher`, one rate
per trial; :class:`tuner.service.search.population.PopulationSearcher`, populations) share, in
one place so that a fix lands in both: the checks of their arguments, TPE's start-up, how an
ended trial is told to Optuna, the snapshot (Tune trial id -> the Optuna trials it holds, ids
told) and what a restart reads back from the journals (trials told after the snapshot, trials
asked after it that no Tune trial holds).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from tuner.service.objective import is_finite
from tuner.service.search import results
from tuner.service.search.study import JournalStudies

STATE_VERSION = 1


def default_startup(trials_per_cell: int) -> int:
    """TPE's random start-up trials per cell: a third of the budget, 3 to 10."""
    return min(10, max(3, trials_per_cell // 3))


def validate(cells: dict[str, dict], trials_per_cell: int, lr_low: float, lr_high: float,
             mode: str) -> None:
    """Raises ValueError on arguments no search can run with (the experiment file is checked
    before; these guard the searchers' own callers)."""
    if not cells:
        raise ValueError("need at least one cell")
    for cell, settings in cells.items():
        if not str(cell) or "/" in str(cell) or str(cell).startswith("."):
            raise ValueError(f"cell id {cell!r} is not usable as a journal file name")
        if "cell" in settings or "lr" in settings:
            raise ValueError(f"cell {cell!r} settings may not define 'cell' or 'lr'")
    if trials_per_cell < 1:
        raise ValueError(f"trials_per_cell must be >= 1, got {trials_per_cell}")
    if not 0 < lr_low < lr_high:
        raise ValueError(f"need 0 < lr_low < lr_high, got {lr_low}, {lr_high}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


@dataclasses.dataclass(frozen=True)
class Ended:
    """How an Optuna trial is told: COMPLETE with its value at the full budget; PRUNED when it
    stopped early, or diverged (``diverged_at``: the step, recorded as a NaN there with the
    ``diverged`` attribute, so TPE ranks it below every trial merely stopped early)."""

    state: TrialState
    value: float | None = None
    diverged_at: int | None = None


def ended(value: Any, step: float | None, max_t: int, diverged: bool = False) -> Ended:
    """The outcome of a trial (or member) whose last result had ``value`` at ``step``: a
    non-finite value, or a loss that turned non-finite (``diverged``), is a divergence."""
    if diverged or not is_finite(value):
        return Ended(TrialState.PRUNED, None, int(step or 0))
    if step is None or float(step) < max_t:
        return Ended(TrialState.PRUNED)
    return Ended(TrialState.COMPLETE, float(value))


class CellSearcher(JournalStudies, results.CellResults, Searcher):
    """The part of a searcher over per-cell journals that does not depend on what a Tune trial
    trains. Subclasses set ``_assigned`` (Tune trial id -> what it holds) and ``_done`` (ids
    told), and say which Optuna trials an id holds (:meth:`_members`) and how their entry of
    ``_assigned`` is written in a snapshot (:meth:`_assigned_state`, :meth:`_assigned_of`)."""

    _assigned: dict[str, Any]
    _done: set[str]

    # ----------------------------------------------------------------- for subclasses
    def _members(self, trial_id: str) -> list[tuple[str, int]]:
        """(cell, Optuna trial number) of every trial the Tune trial holds."""
        raise NotImplementedError

    def _assigned_state(self, held: Any) -> Any:
        """One entry of ``_assigned`` as JSON."""
        raise NotImplementedError

    def _assigned_of(self, raw: Any) -> Any:
        """One entry of ``_assigned`` from :meth:`_assigned_state`'s JSON."""
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        del state

    # ----------------------------------------------------------------- shared
    def _tell(self, cell: str, number: int, outcome: Ended) -> None:
        study = self._studies[cell]
        if outcome.diverged_at is not None:
            study.mark_diverged(number, outcome.diverged_at)
        study.tell(number, outcome.state, outcome.value)

    def _running(self) -> list[str]:
        """Tune trial ids handed out and not yet told."""
        return [tid for tid in self._assigned if tid not in self._done]

    def _unheld_running(self, cell: str) -> list[FrozenTrial]:
        """RUNNING trials of ``cell`` no Tune trial holds: asked after the last snapshot by a
        driver that then died (in number order)."""
        held = {n for tid in self._assigned for c, n in self._members(tid) if c == cell}
        return [t for t in self._studies[cell].trials()
                if t.state == TrialState.RUNNING and t.number not in held]

    def save(self, checkpoint_path: str) -> None:
        """Writes :meth:`get_state` as JSON (``Searcher.save_to_dir``)."""
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Loads :meth:`save` output (``Searcher.restore_from_dir``, before Tune re-adds the
        restored trials)."""
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))

    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "cells": list(self._cells),
                "assigned": {t: self._assigned_state(h) for t, h in self._assigned.items()},
                "done": sorted(self._done), **self._extra_state()}

    def set_state(self, state: dict[str, Any]) -> set[str]:
        """Restores a snapshot; returns the ids it holds as running whose every Optuna trial
        the journals hold as finished (told after the snapshot), now counted as told."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown searcher state version {state.get('version')!r}")
        if state["cells"] != list(self._cells):
            raise ValueError(f"snapshot cells {state['cells']} != {list(self._cells)}")
        self._assigned = {t: self._assigned_of(h) for t, h in state["assigned"].items()}
        self._done = set(state["done"])
        self._set_extra_state(state)
        told_since = {tid for tid in self._running() if all(
            self._studies[c].frozen(n).state.is_finished() for c, n in self._members(tid))}
        self._done |= told_since
        return told_since
