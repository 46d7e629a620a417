"""What a search or a claim optimises: a metric and whether lower or higher is better.

Every comparison of metric values in the service goes through one :class:`Objective`, so the
min/max convention lives in one place (as Ray Tune's ``_metric_op`` does for its schedulers).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

MODES = ("min", "max")


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str  # result key, e.g. eval/nmse
    mode: str  # min | max

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; allowed: {list(MODES)}")

    def score(self, value: float) -> float:
        """``value`` on a scale where larger is always better."""
        return value if self.mode == "max" else -value

    def better(self, a: float, b: float | None) -> bool:
        """Whether ``a`` beats ``b`` (anything beats None)."""
        return b is None or self.score(a) > self.score(b)

    @property
    def direction(self) -> str:
        """Optuna's name for the mode."""
        return "maximize" if self.mode == "max" else "minimize"


def is_finite(value: Any) -> bool:
    """Whether a reported value counts: a finite number (not None, NaN, inf or text). Diverged
    and failed trials report none of these, and no comparison may take them for a result."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
