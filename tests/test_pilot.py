"""The pilot's projection (tuner/service/pilot/project.py) against hand computations; the
measured pilot itself runs in tests/test_service.py (on the tiny experiment, before its
reference run)."""

from __future__ import annotations

import pytest

from tuner.service.pilot import project

GRACE, MAX_T, RF = 20, 60, 3  # milestones 20 and 60


def test_asha_one_trial_trains_the_full_budget():
    assert project.asha_expected_steps(1, GRACE, MAX_T, RF) == MAX_T


def test_asha_two_trials_by_hand():
    """The second trial meets one recorded result at step 20 (the cutoff is that result) and
    stops with probability 1/2: (60 + (20 + 60) / 2) / 2 = 50 steps per trial. The Monte-Carlo
    standard error is 20 / sqrt(2000) / 2 = 0.22 steps."""
    assert project.asha_expected_steps(2, GRACE, MAX_T, RF) == pytest.approx(50, abs=1.0)


def test_asha_many_trials_approach_the_asymptotic_fraction():
    """With many trials, 1/rf of them pass the rung at 20: 20 + 40 / 3 = 33.3 steps each; the
    first trials, which meet nearly empty rungs, add a little."""
    steps = project.asha_expected_steps(300, GRACE, MAX_T, RF)
    assert 33.3 <= steps < 35.0


def cost(**kw) -> project.ShapeCost:
    base = dict(step_s=0.01, compile_s=5.0, warm_start_s=1.0, eval_s=0.5, checkpoint_s=0.5,
                finals_step_s=0.02, finals_compile_s=8.0, finals_checkpoint_s=1.0,
                after_training_s=3.0, peak_bytes=2**30)
    return project.ShapeCost(**(base | kw))


def plan(**kw) -> project.Plan:
    base = dict(cells={"a": "s", "b": "s"}, trials_per_cell=1, max_t=1000, eval_every=100,
                grace_period=100, reduction_factor=3, n_seeds=2, per_cell=None)
    return project.Plan(**(base | kw))


def test_projection_by_hand():
    """One trial per cell trains the full 1,000 steps: 10 s of steps + 10 evaluations and
    checkpoints (10 s) + 1 s warm start = 21 s per cell, plus one compile per worker (5 s).
    Finals per cell: 20 s of steps + 8 s compile + 10 x (2 x 0.5 + 1) s + 2 x 3 s = 54 s."""
    one = project.project(plan(), {"s": cost()}, slots=1, overhead_s=7.0)
    assert one["search_s"] == pytest.approx(2 * 21 + 5)
    assert one["finals_s"] == pytest.approx(2 * 54)
    assert one["total_s"] == pytest.approx(2 * 21 + 5 + 2 * 54 + 7)
    two = project.project(plan(), {"s": cost()}, slots=2, overhead_s=7.0)
    assert two["search_s"] == pytest.approx((2 * 21 + 2 * 5) / 2)  # each worker compiles
    assert two["finals_s"] == pytest.approx(54)


def test_a_cells_own_concurrency_bounds_the_search():
    """Eight trials of one cell at most two at a time take four trial lengths however many
    slots there are."""
    p = plan(cells={"a": "s"}, trials_per_cell=8, max_t=100, per_cell=2)
    trial = 100 * 0.01 + 1 * (0.5 + 0.5) + 1.0  # grace = max_t: no early stop
    got = project.project(p, {"s": cost()}, slots=8, overhead_s=0.0)["search_s"]
    assert got == pytest.approx(8 * trial / 2)


@pytest.mark.parametrize("gpus,cpus,gpt,cpt,cap,slots", [
    (1, 16, 0.25, 1, None, 4),
    (8, 128, 0.25, 1, None, 32),
    (8, 128, 0.25, 1, 4, 4),
    (0, 2, 0, 1, None, 2),
    (0, 2, 0, 1, 1, 1),
    (0, 2, 0, 4, None, 1),
])
def test_slots(gpus, cpus, gpt, cpt, cap, slots):
    assert project.slots_for(gpus, cpus, gpt, cpt, cap) == slots


def test_gpu_share_from_memory():
    """Trials of 20 GiB on a 140 GiB device: 0.8 x 140 / 20 = 5.6, so 5 fit: 0.2 each."""
    assert project.gpus_per_trial_allowed([2 * 2**30, 20 * 2**30], 140 * 2**30) == 0.2
    assert project.gpus_per_trial_allowed([200 * 2**30], 140 * 2**30) == 1.0


def test_percentile_is_numpys():
    import numpy as np

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101):
        values = sorted(rng.random(n).tolist())
        for fraction in (0.0, 0.5, 2 / 3, 0.75, 1.0):
            assert project.percentile(values, fraction) == pytest.approx(
                np.percentile(values, 100 * fraction), abs=1e-12)


def test_population_projection_by_hand():
    """Population 3 of one cell per wave, one wave per cell (trials_per_cell 3), rungs at 100
    and 300 (rf 3, budget 1,000): 3 members to 100, 1 member to 1,000. A 3-member step costs
    0.02 s (measured), a 1-member step 0.01 s. Steps: 100 x 0.02 + 900 x 0.01 = 11 s; evaluations
    and checkpoints (1 s a member): 3 + 9 = 12 s; warm start 1 s + population compile 4 s. Per
    cell 28 s; two cells on one slot 56 s, on two slots 28 s (a wave's longest population)."""
    c = cost(population_size=3, population_step_s=0.02, population_compile_s=4.0)
    assert c.members_step_s(2) == pytest.approx(0.015)
    p = plan(trials_per_cell=3, population=3)
    one = project.project(p, {"s": c}, slots=1, overhead_s=0.0)
    assert one["search_s"] == pytest.approx(2 * 28)
    assert one["asha_steps_per_trial"] == pytest.approx((3 * 100 + 900) / 3)
    assert project.project(p, {"s": c}, slots=2, overhead_s=0.0)["search_s"] == \
        pytest.approx(28)
    # both cells in one program: one population of 6 members per wave
    shared = project.project(plan(trials_per_cell=3, population=3, groups=[["a", "b"]]),
                             {"s": c}, slots=2, overhead_s=0.0)
    steps = 100 * c.members_step_s(6) + 900 * c.members_step_s(2)
    assert shared["search_s"] == pytest.approx(steps + 6 + 2 * 9 + 5)
