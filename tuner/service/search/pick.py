"""A cell's learning rate from everything its search saw, not from one survivor.

A population search halves 8 rates to 3 at 5% of the budget and to 1 at 15%: the one rate that
reaches the full budget is chosen among three whose order at 15% is noise (bench/README.md,
"Search quality": Spearman of the better half -0.04 there). Every member, though, reported its
value at the first rung, where the ranking of *all* rates is reliable (Spearman 0.8), and the
metric is smooth in log lr around its optimum. So the pick is the optimum of a quadratic in
log lr fitted by least squares to the members' values at one step (by default the last step
that every member reached without diverging: the last common rung), over the ``keep`` best
members there (fewer than all: the far side of a valley, or rates that barely learned, would
not be part of the parabola; the default is all 8, as measured), moved by ``shift`` (natural
log of lr; the default +0.3: on the landscapes measured the full budget's optimum lay above
the first rung's, whose values cannot see what the later steps of larger rates gain).

Where the fit says nothing (fewer than 3 finite points, a parabola open downwards or flat),
the pick is the best member at that step; a vertex outside the fitted points is clipped to the
nearest of them (a parabola is a local model: it is not trusted beyond its data) and to the
search range.

A pure function of the members' reported values: the stages (and the search-quality
benchmark, which replays searches on dense curves) call it with what the journals hold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

# Chosen on bench/search_quality's landscape_low (lowest mean regret over keep 4/5/6/8 and
# shift -0.6..+0.3), held out on landscape_wide and landscape_deep (bench/README.md, "Search
# quality on several landscapes"). Every member of a population of 8; the early optimum moved
# up by e^0.3 = 1.35x (where measured, the full budget's optimum lay above the 5% rung's).
KEEP = 8
SHIFT = 0.3


@dataclasses.dataclass(frozen=True)
class Pick:
    """The picked rate and how it was found (for the report and the tests)."""

    lr: float
    step: int | None  # the step whose values were fitted (None: no member had a finite one)
    how: str  # "fit" | "best member" | "clipped fit"
    used: tuple[float, ...] = ()  # the rates the fit used


def common_step(curves: Sequence[Mapping[int, float]]) -> int | None:
    """The last step at which every member that has a finite value at its first evaluation
    step also has one (the last common rung), or None when no member has a finite value."""
    finite = [{s for s, v in c.items() if _finite(v)} for c in curves]
    finite = [f for f in finite if f]
    if not finite:
        return None
    shared = set.intersection(*finite)
    return max(shared) if shared else min(min(f) for f in finite)


def pick_rate(lrs: Sequence[float], curves: Sequence[Mapping[int, float]], lr_low: float,
              lr_high: float, mode: str = "min", step: int | None = None, keep: int = KEEP,
              shift: float = SHIFT) -> Pick:
    """The rate at the optimum of a quadratic in log lr fitted to the members' values.

    Args:
        lrs: Each member's learning rate.
        curves: Each member's metric per evaluation step (NaN or missing: diverged/stopped).
        lr_low, lr_high: The search range (the pick stays inside it).
        mode: "min" if lower is better, else "max".
        step: The step whose values are fitted (None: :func:`common_step`).
        keep: How many of the best members at that step the fit uses (>= 3).
        shift: Added to the vertex' log lr (natural log), before clipping.
    """
    if len(lrs) != len(curves) or not lrs:
        raise ValueError(f"{len(lrs)} rates for {len(curves)} curves; allowed: one curve a rate")
    if keep < 3:
        raise ValueError(f"keep={keep}; allowed: >= 3 (a parabola needs three points)")
    step = common_step(curves) if step is None else step
    sign = 1.0 if mode == "min" else -1.0
    points = sorted((sign * float(c[step]), float(lr)) for lr, c in zip(lrs, curves,
                                                                     strict=True)
                    if step is not None and _finite(c.get(step)))
    if not points:  # nothing finite: the middle of the range
        return Pick(math.sqrt(lr_low * lr_high), None, "best member")
    best = points[0][1]  # ties: the smaller rate (sorted on the value, then the rate)
    used = points[:keep]
    rates = tuple(lr for _, lr in used)
    if len(used) < 3:
        return Pick(best, step, "best member", rates)
    y = np.array([p[0] for p in used])
    x = np.log(np.array(rates))
    center, scale = x.mean(), max(float(np.ptp(x)), 1e-12)
    a, b, _ = np.polyfit((x - center) / scale, y, 2)
    if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
        return Pick(best, step, "best member", rates)
    vertex = center + scale * (-b / (2 * a)) + shift
    clipped = min(max(vertex, x.min()), x.max())
    clipped = min(max(clipped, math.log(lr_low)), math.log(lr_high))
    return Pick(float(math.exp(clipped)), step, "fit" if clipped == vertex else "clipped fit",
                rates)


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
