"""Shared finals (tuner.core.loop.train_members): the seeds of two cells that compile to one
program, each at its own cell's rate, train in one vmapped program and each seed reaches what
its own run reaches; a checkpoint taken mid-way resumes to the same end."""

from __future__ import annotations

import contextlib

import numpy as np
from checkpoint_stop import Stop, save_then_stop
from test_population import BASE, RTOL

from tuner.core import checkpoint
from tuner.core.config import replace
from tuner.core.loop import MemberRuns, Run, train_members
from tuner.core.seeds import seed_config

# two cells of one shape (the eigenvalue is an array of the task), each its own best rate
CELLS = [(0.9, 3e-3), (0.6, 1e-2)]
SEEDS = [0, 5]


def _configs():
    return [seed_config(replace(BASE, **{"data.lambda_val": lam, "train.lr": lr}), s)
            for lam, lr in CELLS for s in SEEDS]


def _alone(cfg):
    run, history = Run(cfg), {}
    with contextlib.suppress(FloatingPointError):
        run.train(run.init_state(), lambda m, s: history.setdefault(m["step"], m))
    return history


def test_each_seed_of_a_shared_program_equals_its_own_run():
    seen = []
    progress = train_members(MemberRuns(_configs()),
                             lambda step, prog, st: seen.append(step))
    assert seen == [10, 20, 30, 40]
    for cfg, mine in zip(_configs(), progress.last, strict=True):
        alone = _alone(cfg)[40]
        np.testing.assert_allclose(mine["eval/nmse"], alone["eval/nmse"], rtol=RTOL)
        np.testing.assert_allclose(mine["train_loss"], alone["train_loss"], rtol=RTOL)
        assert mine["lr_now"] == alone["lr_now"]  # each member on its own cell's schedule
    # the members differ: two cells, two seeds, not one run copied
    values = [m["eval/nmse"] for m in progress.last]
    assert len({round(v, 6) for v in values}) == 4


def test_shared_finals_resume_from_a_checkpoint_to_the_same_end(tmp_path):
    runs = MemberRuns(_configs())
    whole = train_members(runs)

    with contextlib.suppress(Stop):
        train_members(MemberRuns(_configs()), save_then_stop(tmp_path / "ckpt", 20))
    runs = MemberRuns(_configs())
    states, progress = checkpoint.restore(tmp_path / "ckpt", runs.init_states())
    resumed = train_members(runs, states=states, progress=progress)
    for a, b in zip(whole.last, resumed.last, strict=True):
        np.testing.assert_allclose(b["eval/nmse"], a["eval/nmse"], rtol=RTOL)
