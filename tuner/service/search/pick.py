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

The grid neighbours' members (``neighbours``: cells one step away, whose landscapes are close)
join the fit: one parabola shape (curvature and vertex) through every cell's values, each cell
with its own level, its values taken relative to that level (cells' metrics differ in scale).
A cell's own members weigh as much as all its neighbours' together, so a cell whose optimum
differs from its neighbours' is pulled about halfway at most (exactly halfway for valleys of
one shape tried at the same rates: tests/test_pick_wiring.py). On the measured landscapes it
lowered the mean regret of the fit on the cell alone on three of five and matched it on two
(bench/README.md).

Where the fit says nothing (fewer than 3 finite points of the cell's own, a parabola open
downwards or flat), the pick is the best member at that step; a vertex outside the cell's own
fitted points is clipped to the nearest of them (a parabola is a local model: it is not trusted
beyond its data) and to the search range.

A pure function of the members' reported values: the population searcher
(:meth:`tuner.service.search.population.PopulationSearcher.best_per_cell`) calls it with what
the journals hold, and the search-quality benchmark with the dense grid's curves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

# SHIFT chosen on bench/search_quality's landscape_low (lowest mean regret of the pooled fit
# over shift -0.6..+0.6 in steps of 0.15), held out on landscape_wide, _deep, _patch8 and _top
# (bench/README.md, "Search quality on several landscapes"); KEEP stays every member of a
# population of 8, as before (not re-tuned: the README says why). The early optimum moved up by
# e^0.3 = 1.35x (where measured, the full budget's optimum lay above the 5% rung's).
KEEP = 8
SHIFT = 0.3
PICKS = ("fit", "survivor")  # search.pick: this module's rule, or the best full-budget member

Curves = Sequence[Mapping[int, float]]


@dataclasses.dataclass(frozen=True)
class Pick:
    """The picked rate and how it was found (for the report and the tests)."""

    lr: float
    step: int | None  # the step whose values were fitted (None: no member had a finite one)
    how: str  # "fit" | "best member" | "clipped fit"
    used: tuple[float, ...] = ()  # the cell's own rates the fit used
    cells: int = 1  # cells whose values the fit used (the cell and its neighbours)


def common_step(curves: Curves) -> int | None:
    """The last step at which every member that has a finite value at its first evaluation
    step also has one (the last common rung), or None when no member has a finite value."""
    finite = [{s for s, v in c.items() if _finite(v)} for c in curves]
    finite = [f for f in finite if f]
    if not finite:
        return None
    shared = set.intersection(*finite)
    return max(shared) if shared else min(min(f) for f in finite)


def pick_rate(lrs: Sequence[float], curves: Curves, lr_low: float, lr_high: float,
              mode: str = "min", step: int | None = None, keep: int = KEEP,
              shift: float = SHIFT,
              neighbours: Sequence[tuple[Sequence[float], Curves]] = ()) -> Pick:
    """The rate at the optimum of a quadratic in log lr fitted to the members' values.

    Args:
        lrs: Each member's learning rate.
        curves: Each member's metric per evaluation step (NaN or missing: diverged/stopped).
        lr_low, lr_high: The search range (the pick stays inside it).
        mode: "min" if lower is better, else "max".
        step: The step whose values are fitted (None: :func:`common_step`).
        keep: How many of the best members at that step the fit uses, per cell (>= 3).
        shift: Added to the vertex' log lr (natural log), before clipping.
        neighbours: Each grid neighbour's ``(lrs, curves)``, read at its own last common
            rung (a neighbour with fewer than 3 finite values there is left out).
    """
    if len(lrs) != len(curves) or not lrs:
        raise ValueError(f"{len(lrs)} rates for {len(curves)} curves; allowed: one curve a rate")
    if keep < 3:
        raise ValueError(f"keep={keep}; allowed: >= 3 (a parabola needs three points)")
    sign = 1.0 if mode == "min" else -1.0
    step = common_step(curves) if step is None else step
    own = _best_points(lrs, curves, step, sign, keep)
    if not own:  # nothing finite: the middle of the range
        return Pick(math.sqrt(lr_low * lr_high), None, "best member")
    best = own[0][1]  # ties: the smaller rate (sorted on the value, then the rate)
    rates = tuple(lr for _, lr in own)
    if len(own) < 3:
        return Pick(best, step, "best member", rates)
    others = [p for n_lrs, n_curves in neighbours
              if len(p := _best_points(n_lrs, n_curves, common_step(n_curves), sign, keep)) >= 3]
    groups = [own, *others]
    weight = [float(max(1, len(others)))] + [1.0] * len(others)  # own = all neighbours
    x = np.log(np.array([lr for g in groups for _, lr in g]))
    y = np.concatenate([_relative(np.log([lr for _, lr in g]), np.array([v for v, _ in g]))
                        for g in groups])
    w = np.sqrt(np.concatenate([np.full(len(g), wt) for g, wt in zip(groups, weight,
                                                                       strict=True)]))
    center, scale = x.mean(), max(float(np.ptp(x)), 1e-12)
    z = (x - center) / scale
    levels = np.zeros((len(x), len(groups)))  # one level (intercept) per cell
    levels[np.arange(len(x)), np.repeat(np.arange(len(groups)), [len(g) for g in groups])] = 1
    design = np.column_stack([z * z, z, levels])
    (a, b, *_), *_ = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)
    if not (a > 0 and math.isfinite(a) and math.isfinite(b)):
        return Pick(best, step, "best member", rates, len(groups))
    vertex = center + scale * (-b / (2 * a)) + shift
    mine = np.log(np.array(rates))
    clipped = min(max(vertex, mine.min()), mine.max())
    clipped = min(max(clipped, math.log(lr_low)), math.log(lr_high))
    return Pick(float(math.exp(clipped)), step, "fit" if clipped == vertex else "clipped fit",
                rates, len(groups))


def _best_points(lrs: Sequence[float], curves: Curves, step: int | None, sign: float,
                 keep: int) -> list[tuple[float, float]]:
    """(sign * value, lr) of the ``keep`` best members with a finite value at ``step``."""
    if step is None:
        return []
    return sorted((sign * float(c[step]), float(lr)) for lr, c in zip(lrs, curves, strict=True)
                  if _finite(c.get(step)))[:keep]


def _relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Values less their best, over the size of the cell's level: cells' metrics differ in
    scale (a cell near lambda 1 has a larger nmse), their valleys' shapes in log lr much less.
    The level is the minimum of the cell's own parabola where that is a finite valley above
    0 (exact for values on a parabola, whatever rates were tried), else the best value."""
    best = float(y.min())
    level = best
    if len(y) >= 3:
        a, b, c = np.polyfit(x - x.mean(), y, 2)
        bottom = c - b * b / (4 * a) if a > 0 else math.nan
        if math.isfinite(bottom) and bottom <= best and bottom * best > 0:
            level = bottom
    size = abs(level)
    return (y - best) / (size if size > 0 else 1.0)


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
