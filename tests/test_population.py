"""A population (tuner.core.population) trains each member as its own run would, stops exactly
the members its halving rule names, and resumes from a checkpoint to the same end."""

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
from checkpoint_stop import Stop, save_then_stop
from test_speed_paths import SMALL

from tuner.core import checkpoint
from tuner.core.config import replace
from tuner.core.loop import Run
from tuner.core.population import Population, train_population

BASE = replace(SMALL, **{"train.steps": 40, "train.eval_every": 10, "train.eval_batch": 64})
# members: two cells that share one program (the LDS eigenvalue is an array of the task), two
# rates each; the last rate diverges
MEMBERS = [(0.9, 3e-3), (0.9, 1e-2), (0.6, 3e-3), (0.6, 1e4)]
# float32 (eps 1.2e-7) summed in another order inside the vmapped program, then carried through
# 40 Adam steps: measured here 1.1e-7 relative (one ulp); the tolerance allows ~400 ulps for
# another CPU's XLA kernels. A 1% change of the rate moves nmse by 2.4e-4 relative (checked
# below), so 5e-5 still separates rounding from a different run.
RTOL = 5e-5
FIXTURE = Path(__file__).parent / "fixtures" / "tinypop.yaml"


def _configs():
    return [replace(BASE, **{"data.lambda_val": lam, "train.lr": lr}) for lam, lr in MEMBERS]


def _alone(cfg):
    run, history = Run(cfg), {}
    with contextlib.suppress(FloatingPointError):
        run.train(run.init_state(), lambda m, s: history.setdefault(m["step"], m))
    return history


def test_members_equal_separate_runs_and_stop_when_told():
    pop = Population(_configs())
    seen: list[tuple[int, list[int]]] = []

    def halve(step, previous, progress):  # stop member 1 at step 20, whatever its value
        return {1} if previous < 20 <= step else set()

    progress = train_population(pop, lambda s, p, st: seen.append((s, list(p.alive))), halve)
    assert seen == [(10, [0, 1, 2]), (20, [0, 2]), (30, [0, 2]), (40, [0, 2])]
    assert progress.last[1]["stopped"] and progress.last[1]["step"] == 20
    assert progress.last[3]["diverged"] and not math.isfinite(progress.last[3]["train_loss"])
    for i, cfg in enumerate(_configs()[:3]):
        alone = _alone(cfg)
        mine = progress.last[i]
        np.testing.assert_allclose(mine["eval/nmse"], alone[mine["step"]]["eval/nmse"], rtol=RTOL)
        np.testing.assert_allclose(mine["train_loss"], alone[mine["step"]]["train_loss"],
                                   rtol=RTOL)
    # the tolerance is tight enough to tell a 1% different rate apart
    other = _alone(replace(_configs()[0], **{"train.lr": 3e-3 * 1.01}))
    assert abs(other[40]["eval/nmse"] / progress.last[0]["eval/nmse"] - 1) > 4 * RTOL


def test_resume_from_a_checkpoint_reaches_the_same_end(tmp_path):
    pop = Population(_configs()[:3])

    def halve(step, previous, progress):
        return {2} if previous < 20 <= step else set()

    straight = train_population(pop, lambda *a: None, halve)

    with pytest.raises(Stop):
        train_population(pop, save_then_stop(tmp_path / "ckpt", 20), halve)
    saved = checkpoint.read_progress(tmp_path / "ckpt")
    assert saved.alive == [0, 1]
    states, progress = checkpoint.restore(tmp_path / "ckpt", pop.init_states(saved.alive))
    resumed = train_population(pop, lambda *a: None, halve, states=states, progress=progress)
    for a, b in zip(straight.last, resumed.last, strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(a["eval/nmse"], b["eval/nmse"], rtol=RTOL)
        assert a["step"] == b["step"]


def test_members_must_share_one_program():
    with pytest.raises(ValueError, match="another step"):
        Population([BASE, replace(BASE, **{"model.d_model": 64})])
    with pytest.raises(ValueError, match="train.eval_every differ"):
        Population([BASE, replace(BASE, **{"train.eval_every": 20})])


def test_cells_grouped_into_one_program_can_share_it(tmp_path):
    """``shapes`` groups cells by everything a program holds static: a grid over the evaluation
    interval gives one group per interval, and every group it gives trains as one population
    (issue 31: such cells were grouped and every member FAILed)."""
    import yaml

    from tuner.service.experiment import load
    from tuner.service.shapes import shapes
    from tuner.service.trial_spec import Worker, population_config
    from tuner.service.trials import population_configs

    doc = yaml.safe_load(FIXTURE.read_text())
    del doc["fixed"]["train.eval_every"], doc["fixed"]["data.lambda_val"], doc["claims"]
    doc["grid"] = {"data.lambda_val": [0.6, 0.9], "train.eval_every": [10, 20]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    exp = load(str(path))
    cells = exp.cells()
    groups = list(shapes(exp).values())
    assert sorted([cells[c]["train.eval_every"] for c in g] for g in groups) == [[10, 10],
                                                                               [20, 20]]
    for group in groups:
        config = population_config(0, [(c, 0, 1e-3) for c in group], cells, {}, Worker())
        assert len(Population(population_configs(exp.base, config))) == len(group)


def test_lr_now_is_each_members_own_schedule():
    """Members of one program may differ in warmup and schedule (traced): each reports its own
    rate, checked against the schedule written out here."""
    lr = 1e-3
    cosine = replace(BASE, **{"train.lr": lr, "train.warmup_frac": 0.25})
    constant = replace(BASE, **{"train.lr": lr, "train.schedule": "constant",
                                "train.warmup_frac": 0.05})
    seen = []
    train_population(Population([cosine, constant]),
                     lambda step, p, st: seen.append([m["lr_now"] for m in p.last]),
                     lambda *a: set())
    # the rate of the last update before each evaluation (updates counted from 1): warmup
    # over 10 of the 40 updates, then cosine to 0 at the 40th
    expected = [lr * 0.5 * (1 + math.cos(math.pi * (s - 10) / 30)) for s in (10, 20, 30)]
    np.testing.assert_allclose([m[0] for m in seen[:3]], expected, rtol=1e-5)
    np.testing.assert_allclose([m[1] for m in seen], [lr] * 4, rtol=1e-6)


def test_masked_members_end_as_compacted_ones(tmp_path):
    """Stopped members kept in the program (the CPU's choice) change nobody's result, and a
    masked checkpoint (every member's state) resumes to the same end."""
    pop = Population(_configs()[:3])

    def halve(step, previous, progress):
        return {2} if previous < 20 <= step else set()

    compacted = train_population(pop, lambda *a: None, halve, compact=True)
    seen = []

    def save_at_20(step, progress, states):
        seen.append(list(progress.alive))
        if step == 20:
            checkpoint.save(tmp_path / "ckpt", states, progress)

    masked = train_population(pop, save_at_20, halve, compact=False)
    assert seen == [[0, 1, 2], [0, 1], [0, 1], [0, 1]]
    saved = checkpoint.read_progress(tmp_path / "ckpt")
    states, progress = checkpoint.restore(tmp_path / "ckpt", pop.init_states([0, 1, 2]))
    resumed = train_population(pop, lambda *a: None, halve, states=states, progress=progress,
                               compact=False)
    assert saved.alive == [0, 1]
    for a, b, c in zip(compacted.last, masked.last, resumed.last, strict=True):
        assert a["step"] == b["step"] == c["step"]
        np.testing.assert_allclose(b["eval/nmse"], a["eval/nmse"], rtol=RTOL)
        np.testing.assert_allclose(c["eval/nmse"], a["eval/nmse"], rtol=RTOL)
