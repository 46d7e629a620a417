"""What the stages, the status file and the report read back from a finished search: the best
full-budget trial of a cell and one table of every trial (from the journals, the one record)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from tuner.service.objective import Objective, is_finite
from tuner.service.search.study import DIVERGED_ATTR, TUNE_ID_ATTR

if TYPE_CHECKING:
    import pandas as pd

    from tuner.service.search.study import CellStudy

EDGE_FRACTION = 0.1  # an lr in the outer 10% of the log range sits at its edge
COLUMNS = ["cell", "number", "lr", "state", "value", "last_step", "diverged", TUNE_ID_ATTR,
           "wave", "source"]  # the last two: population search (where the rate came from)


def best_trial(trials: list[FrozenTrial], objective: Objective, lr_low: float, lr_high: float
               ) -> dict[str, Any] | None:
    """The best COMPLETE (full-budget, finite) trial: ``{"lr", "value", "trial_number",
    "at_edge"}``, or None. A tie on the value goes to the trial that reached it first."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and is_finite(t.value)]
    if not complete:
        return None
    best = min(complete, key=lambda t: (-objective.score(t.value), _first_step_at_final_value(t)))
    lr = float(best.params["lr"])
    return {"lr": lr, "value": float(best.value), "trial_number": best.number,
            "at_edge": edge(lr, lr_low, lr_high)}


def edge(lr: float, lr_low: float, lr_high: float) -> str | None:
    """"low" / "high" when ``lr`` lies in the outer 10% of the log range (widen it), else None."""
    lo, hi = math.log(lr_low), math.log(lr_high)
    position = (math.log(lr) - lo) / (hi - lo)
    if position < EDGE_FRACTION:
        return "low"
    if position > 1 - EDGE_FRACTION:
        return "high"
    return None


def trials_frame(studies: dict[str, CellStudy]) -> pd.DataFrame:
    """One row per Optuna trial of every cell (``COLUMNS``)."""
    import pandas as pd

    rows = [{"cell": cell, "number": t.number, "lr": t.params.get("lr"), "state": t.state.name,
             "value": t.value,
             "last_step": max(t.intermediate_values) if t.intermediate_values else None,
             "diverged": bool(t.user_attrs.get(DIVERGED_ATTR, False)),
             TUNE_ID_ATTR: t.user_attrs.get(TUNE_ID_ATTR),
             "wave": t.user_attrs.get("wave"), "source": t.user_attrs.get("source")}
            for cell, study in studies.items() for t in study.trials()]
    return pd.DataFrame(rows, columns=COLUMNS)


def _first_step_at_final_value(trial: FrozenTrial) -> float:
    """Step at which a trial first reported its final value: among trials that tie on the
    value (e.g. every run that fits the training set has train accuracy 1.0), the one that got
    there soonest is the best."""
    return min((step for step, v in trial.intermediate_values.items() if v == trial.value),
               default=math.inf)


class CellResults:
    """What a finished search answers, for the searchers (which hold ``_studies`` per cell,
    the range ``_lr_low``/``_lr_high`` and their ``objective``)."""

    _studies: dict[str, CellStudy]
    _lr_low: float
    _lr_high: float
    objective: Objective

    def best_per_cell(self) -> dict[str, dict[str, Any] | None]:
        """Best full-budget trial per cell (:func:`best_trial`), None where none."""
        return {cell: best_trial(study.trials(), self.objective, self._lr_low, self._lr_high)
                for cell, study in self._studies.items()}

    def trials_dataframe(self) -> pd.DataFrame:
        """One row per Optuna trial of every cell, read from the journals."""
        return trials_frame(self._studies)
