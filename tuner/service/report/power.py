"""How many finals seeds a verdict needs: the power of the judge's test of a contrast.

A verdict step is a Welch t test of a contrast of cell means (:class:`.verdicts.Contrast`):
with n seeds in every cell and the seed sd of cell i as measured, its standard error is
sqrt(sum c_i^2 sd_i^2 / n) and its Welch-Satterthwaite degrees of freedom are
(n - 1) (sum v_i)^2 / sum v_i^2 with v_i = c_i^2 sd_i^2. For a true value ``effect`` the
statistic is noncentral t with noncentrality effect / se, so the chance that it counts in the
effect's direction is P(T > t(0.975, df)) under that law. The measured sd stands in for the true
one (as in every sample-size plan), and a trend's Spearman condition is not part of it.
``tests/test_verdicts.py`` checks the formula against a Monte-Carlo simulation of the judge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from tuner.service.report.verdicts import ALPHA, Contrast

TARGET = 0.8  # the power a plan aims at
MAX_SEEDS = 1000  # beyond this a plan says "more than": the effect is lost in the spread


def welch(c: Contrast, n: int) -> tuple[float, float]:
    """(se, df) of the contrast with ``n`` seeds in every cell, each with its measured sd."""
    v = np.array([c.coef[cell] ** 2 * c.sd[cell] ** 2 for cell in c.coef], dtype=float)
    v = v[v > 0]
    if not len(v) or not np.isfinite(v).all():
        return math.nan, math.nan
    return math.sqrt(v.sum() / n), (n - 1) * v.sum() ** 2 / float(v @ v)


def power(c: Contrast, effect: float, n: int, sides: int = 2) -> float:
    """The chance that the contrast counts, in the direction of ``effect``, with ``n`` seeds
    (``sides`` 1: a one-sided test at ALPHA, as the learning check)."""
    se, df = welch(c, n)
    if not (math.isfinite(se) and se > 0):
        return math.nan
    quantile = stats.t.ppf(1 - ALPHA / sides, df)
    return float(stats.nct.sf(quantile, df, abs(effect) / se))


def seeds_needed(tests: Sequence[Contrast], effects: Sequence[float],
                 target: float = TARGET, sides: int = 2) -> int | None:
    """The fewest seeds per cell (>= 2) at which every test reaches ``target`` power for its
    effect (a verdict needs all of them; each is held to the target, a slight overstatement
    of the joint power when they are correlated); None: more than :data:`MAX_SEEDS`."""
    def enough(n: int) -> bool:
        return all(power(c, e, n, sides) >= target
                   for c, e in zip(tests, effects, strict=True))

    if not tests or any(not (math.isfinite(e) and e != 0) for e in effects):
        return None
    if any(not math.isfinite(power(c, e, 2, sides))
           for c, e in zip(tests, effects, strict=True)):
        return None
    lo, hi = 1, 2  # enough(hi) is the invariant sought; lo: known not enough (or below 2)
    while not enough(hi):
        lo, hi = hi, hi * 2
        if lo >= MAX_SEEDS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi if hi <= MAX_SEEDS else None
