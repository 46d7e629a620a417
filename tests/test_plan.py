"""The stage plan (tuner/service/plan/programs.py) against hand counts and against Ray's
measured placement rule: programs as large as fit, at least one per GPU where the grid allows,
never two trials on a card while another card is idle, and a clear error where a cell cannot
fit at all."""

from __future__ import annotations

import pytest

from tuner.service.plan.memory import ProgramMemory
from tuner.service.plan.programs import HEADROOM, SAFETY, ProgramTooLarge, plan_stage

GIB = 2**30
H100 = 80 * GIB
# exp1's search step at the SPEC size on an H100 (bench/README.md, "Sized to the card"):
# 0.664 GiB a member compiled for the GPU, 1.83 GiB as the CPU's upper bound
GPU_MEMBER = ProgramMemory(int(0.02 * GIB), int(0.664 * GIB), "device")
CPU_MEMBER = ProgramMemory(int(0.01 * GIB), int(1.83 * GIB), "estimate")
EXP1 = [[f"lambda={x}" for x in (0.36, 0.68, 0.84, 0.92, 0.96, 0.98, 0.99)]]


def _memory(shapes, model):
    return {g[0]: model for g in shapes}


def first_fit(share: float, n_trials: int, n_gpus: int) -> list[int]:
    """Trials per GPU as Ray places fractional requests (measured in bench/README.md: first
    fit, the lowest-numbered card with room), ``n_trials`` placed one after another."""
    used = [0.0] * n_gpus
    count = [0] * n_gpus
    for _ in range(n_trials):
        for g in range(n_gpus):
            if used[g] + share <= 1 + 1e-9:
                used[g] += share
                count[g] += 1
                break
    return count


def _check_invariants(plan, shapes, members, model, card, share=1.0):
    cells = [c for p in plan.programs for c in p.cells]
    assert sorted(cells) == sorted(c for g in shapes for c in g)  # every cell once
    for p in plan.programs:
        assert any(set(p.cells) <= set(g) for g in shapes)  # one shape per program
        assert p.members == len(p.cells) * members
        assert p.bytes == model.bytes(p.members) <= card * HEADROOM * SAFETY * share


def test_exp1_fits_one_card_as_one_program():
    plan = plan_stage("search", EXP1, 8, _memory(EXP1, GPU_MEMBER), H100, gpus=1)
    assert len(plan.programs) == 1 and plan.programs[0].members == 56
    assert plan.gpu_share == 1.0 and plan.slots == 1  # 37 GiB: more than half a card
    _check_invariants(plan, EXP1, 8, GPU_MEMBER, H100)


def test_a_program_too_large_is_cut_into_the_fewest_that_fit():
    # 56 x 1.83 = 102 GiB > 68 GiB a card's program may use: two programs, 4 + 3 cells
    plan = plan_stage("search", EXP1, 8, _memory(EXP1, CPU_MEMBER), H100, gpus=1)
    assert [len(p.cells) for p in plan.programs] == [4, 3]
    _check_invariants(plan, EXP1, 8, CPU_MEMBER, H100)


def test_at_least_one_program_per_gpu_where_the_grid_allows():
    plan = plan_stage("search", EXP1, 8, _memory(EXP1, GPU_MEMBER), H100, gpus=8)
    assert len(plan.programs) == 7  # 7 cells: one each, the eighth GPU has nothing to do
    assert plan.gpu_share == 1.0
    plan4 = plan_stage("search", EXP1, 8, _memory(EXP1, GPU_MEMBER), H100, gpus=4)
    assert sorted(len(p.cells) for p in plan4.programs) == [1, 2, 2, 2]


@pytest.mark.parametrize("n_shapes,n_gpus", [(12, 1), (12, 8), (16, 8), (3, 2), (5, 4),
                                             (24, 8), (6, 4)])
def test_placement_never_piles_trials_on_a_card_while_another_idles(n_shapes, n_gpus):
    shapes = [[f"shape{i}"] for i in range(n_shapes)]
    small = ProgramMemory(0, int(0.7 * GIB), "device")  # 8 members: 5.6 GiB, packable
    plan = plan_stage("search", shapes, 8, _memory(shapes, small), H100, gpus=n_gpus)
    running = min(len(plan.programs), plan.slots)
    per_gpu = first_fit(plan.gpu_share, running, n_gpus)
    assert sum(per_gpu) == running  # every trial that may run finds a card
    if max(per_gpu) > 1:
        assert min(per_gpu) >= 1, per_gpu  # no card holds two while another is idle
    # and where programs outnumber GPUs twice over, small programs do pack
    if n_shapes >= 2 * n_gpus:
        assert plan.gpu_share < 1


def test_a_program_over_half_a_card_takes_a_whole_one():
    shapes = [[f"s{i}"] for i in range(16)]
    big = ProgramMemory(0, int(5 * GIB), "device")  # 8 members: 40 GiB
    plan = plan_stage("finals", shapes, 8, _memory(shapes, big), H100, gpus=2)
    assert plan.gpu_share == 1.0 and plan.slots == 2


def test_a_fixed_share_cuts_programs_to_fit_it():
    plan = plan_stage("search", EXP1, 8, _memory(EXP1, GPU_MEMBER), H100, gpus=1,
                      fixed_share=0.25)
    assert plan.gpu_share == 0.25
    # a quarter card's program: 0.25 x 80 x 0.95 x 0.9 = 17.1 GiB, 25 members, so 3 cells
    assert max(len(p.cells) for p in plan.programs) == 3
    _check_invariants(plan, EXP1, 8, GPU_MEMBER, H100, share=0.25)


def test_a_cell_that_cannot_fit_names_the_shape_and_the_remedy():
    huge = ProgramMemory(0, 20 * GIB, "device")
    with pytest.raises(ProgramTooLarge, match=r"cell lambda=0.36's 8 members need 160.0 GiB.*"
                                              r"lower search.population"):
        plan_stage("search", EXP1, 8, _memory(EXP1, huge), H100, gpus=1)


def test_cpu_trials_keep_one_program_per_shape():
    shapes = [["a", "b"], ["c"]]
    plan = plan_stage("finals", shapes, 3, {}, None, gpus=0)
    assert plan.groups == [["a", "b"], ["c"]] and plan.gpu_share == 0 and plan.slots is None


def test_the_plan_round_trips_through_its_file_form():
    from tuner.service.plan.programs import StagePlan

    plan = plan_stage("search", EXP1, 8, _memory(EXP1, CPU_MEMBER), H100, gpus=2)
    assert StagePlan.from_dict(plan.to_dict()) == plan


def test_a_stage_keeps_its_plan_on_resume_and_replans_for_other_cells(tmp_path):
    """plan.json: a resumed stage gets the programs it started with (its restored searcher
    and trials hold them); the same stage name over other cells (finals rerun after a
    re-search set the old ones aside) is planned anew."""
    from pathlib import Path

    from tuner.service.dirs import ExperimentDirs
    from tuner.service.experiment import load
    from tuner.service.plan.stage import stage_plan

    exp = load(str(Path(__file__).parent / "fixtures" / "tinyshare.yaml"))
    dirs = ExperimentDirs(tmp_path)
    cells = list(exp.cells())
    first = stage_plan(exp, dirs, "finals", cells, 2, gpus=2)
    assert stage_plan(exp, dirs, "finals", cells, 2, gpus=8) == first  # kept, not re-planned
    again = stage_plan(exp, dirs, "finals", cells[:1], 2, gpus=2)
    assert again.groups == [cells[:1]]
