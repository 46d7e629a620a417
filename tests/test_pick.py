"""The fitted pick (tuner.service.search.pick) on members whose answer is known: values that
are a parabola in log lr (its vertex computed by hand), members that diverged or were stopped
at a rung, a valley outside the tried rates, too few points to fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.service.search.pick import SHIFT, common_step, pick_rate

LO, HI = 1e-4, 1e-1
RATES = [float(r) for r in np.geomspace(1.5e-4, 7e-2, 8)]


def _curves(value_at, rates=RATES, steps=(50,)):
    return [{s: value_at(lr, s) for s in steps} for lr in rates]


def test_the_pick_is_the_vertex_of_a_parabola_in_log_lr():
    """Values 1 + 0.02 (ln lr - ln 3e-3)^2: the vertex is 3e-3, between the tried rates."""
    best = 3e-3
    curves = _curves(lambda lr, s: 1 + 0.02 * (math.log(lr / best)) ** 2)
    p = pick_rate(RATES, curves, LO, HI, shift=0.0)
    assert p.how == "fit" and p.step == 50
    assert p.lr == pytest.approx(best, rel=1e-6)
    # the default moves it up by exp(SHIFT) (bench/README.md: the full budget's optimum lay
    # above the first rung's on the landscapes measured)
    assert pick_rate(RATES, curves, LO, HI).lr == pytest.approx(best * math.exp(SHIFT),
                                                                 rel=1e-6)
    assert min(abs(math.log(r / best)) for r in RATES) > 0.1  # not simply a tried rate


def test_only_the_best_members_shape_the_fit():
    """Rates that barely learned (a plateau at 2.0) and diverged ones (NaN) lie off the
    parabola: with keep=5 the fit reads the five best, which lie on it exactly."""
    best = 2e-3

    def value(lr, s):
        if lr > 3e-2:
            return math.nan
        if lr < 3e-4:
            return 2.0
        return 1 + 0.05 * math.log(lr / best) ** 2

    p = pick_rate(RATES, _curves(value), LO, HI, keep=5, shift=0.0)
    assert p.lr == pytest.approx(best, rel=1e-6) and len(p.used) == 5


def test_a_valley_beyond_the_tried_rates_is_clipped_to_them():
    """Values falling all the way to the largest rate: the parabola's vertex lies beyond the
    data, and the pick is the largest fitted rate (a local model is not extrapolated)."""
    p = pick_rate(RATES, _curves(lambda lr, s: 1 - 0.1 * math.log(lr) + 0.001 * math.log(lr)
                                 ** 2), LO, HI, keep=8)
    assert p.how == "clipped fit" and p.lr == pytest.approx(RATES[-1])


def test_a_parabola_open_downwards_falls_back_to_the_best_member():
    p = pick_rate(RATES, _curves(lambda lr, s: 1 - 0.02 * math.log(lr / 3e-3) ** 2), LO, HI,
                  keep=8)
    assert p.how == "best member" and p.lr in (RATES[0], RATES[-1])


def test_too_few_finite_members_give_the_best_one_and_none_the_middle():
    curves = [{50: math.nan} for _ in RATES]
    curves[2], curves[5] = {50: 1.3}, {50: 1.1}
    p = pick_rate(RATES, curves, LO, HI)
    assert p.how == "best member" and p.lr == RATES[5]
    p = pick_rate(RATES, [{50: math.nan} for _ in RATES], LO, HI)
    assert p.step is None and p.lr == pytest.approx(math.sqrt(LO * HI))


def test_the_last_common_rung_is_read_and_later_survivors_do_not_move_it():
    """A population halved 8 -> 3 at step 50: every member has step 50, three go on to 150
    (with values that would put the pick elsewhere). The default step is the last one all
    members reached: 50."""
    best = 3e-3
    curves = _curves(lambda lr, s: 1 + 0.02 * math.log(lr / best) ** 2)
    for i in (1, 2, 3):  # survivors report a later rung where rate 1 looks best
        curves[i][150] = 0.5 if i == 1 else 0.9
    assert common_step(curves) == 50
    assert pick_rate(RATES, curves, LO, HI, shift=0.0).lr == pytest.approx(best, rel=1e-6)
    # a member that diverged before the first rung has no say in the common step
    curves[0] = {50: math.nan}
    assert common_step(curves) == 50


def test_mode_max_and_shift():
    """A score to maximise (higher is better) is the mirrored parabola; ``shift`` moves the
    pick by exp(shift) in lr."""
    best = 1e-3
    curves = _curves(lambda lr, s: 0.9 - 0.01 * math.log(lr / best) ** 2)
    assert pick_rate(RATES, curves, LO, HI, mode="max", shift=0.0).lr == pytest.approx(
        best, rel=1e-6)
    moved = pick_rate(RATES, curves, LO, HI, mode="max", shift=-0.5)
    assert moved.lr == pytest.approx(best * math.exp(-0.5), rel=1e-6)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="one curve a rate"):
        pick_rate(RATES[:3], _curves(lambda lr, s: 1.0), LO, HI)
    with pytest.raises(ValueError, match="keep=2"):
        pick_rate(RATES, _curves(lambda lr, s: 1.0), LO, HI, keep=2)
