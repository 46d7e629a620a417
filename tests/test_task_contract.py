"""Every task of the registry implements the contract of data.task.Task, checked the same way
for each (like Optuna's one sampler test over every sampler)."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest

from data.registry import TASKS, metric_mode
from data.task import Task
from tuner.core import steps
from tuner.core.config import replace
from tuner.core.loop import Run
from tuner.core.seeds import get_field, seed_config
from tuner.service import experiment

# an experiment of each task, smoke size: the configs users run
EXPERIMENT_OF = {"lds": "exp1", "bigram": "bigram", "modular": "grokking", "text": "toy_lm"}


def test_every_task_has_an_experiment_here():
    assert set(EXPERIMENT_OF) == set(TASKS)


@pytest.fixture(scope="module", params=sorted(TASKS))
def case(request):
    exp = experiment.load(EXPERIMENT_OF[request.param], smoke=True)
    assert exp.base.task == request.param
    over = next(iter(exp.cells().values()))
    cfg = replace(exp.base, **over, **{"rollout.n_sequences": 8})
    return request.param, cfg, Run(cfg)


def test_declarations_name_the_task_metrics(case):
    name, cfg, run = case
    cls = TASKS[name]
    assert isinstance(run.task, Task)
    metrics, _ = run.evaluate(run.init_state())
    assert set(metrics) == set(cls.METRICS) | {"weight_norm"}
    assert all(math.isfinite(v) for v in metrics.values())
    for declared in (cls.REPORTED, cls.HIGHER_IS_BETTER, cls.SYSTEM_METRICS):
        assert set(declared) <= set(cls.METRICS) | {m for m, _, _ in cls.MILESTONES}
    if cls.LEARNING_CHECK is not None:
        metric, floor = cls.LEARNING_CHECK
        assert metric in cls.METRICS and metric_mode(name, metric) == "max"
        assert run.task.zero_predictor_metrics().get(metric, floor) <= floor + 1e-6
    assert set(run.task.zero_predictor_metrics()) <= set(cls.METRICS)
    for _, metric, _ in cls.MILESTONES:
        assert metric in cls.METRICS


def test_loss_is_a_finite_scalar_with_finite_gradients(case):
    _, cfg, run = case
    state = run.init_state()
    new, m = steps.train_steps(state, run.task, run.hparams, spec=run.spec, n_steps=2)
    assert np.ndim(m["loss"]) == 0 and math.isfinite(float(m["loss"]))
    assert math.isfinite(float(m["grad_norm"])) and int(new.step) == 2


def test_system_seed_draws_a_new_instance_that_stacks(case):
    """The finals give each seed its own instance (SYSTEM_SEED) and train them stacked."""
    name, cfg, run = case
    field = TASKS[name].SYSTEM_SEED
    a, b = (TASKS[name].from_run_config(seed_config(cfg, s)) for s in (0, 1))
    if field is None:
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
        return
    assert get_field(seed_config(cfg, 0), field) != get_field(seed_config(cfg, 1), field)
    assert any(not np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    stacked = steps.stack([a, b])
    assert all(x.shape[0] == 2 for x in jax.tree.leaves(stacked))


def test_after_training_reports_the_declared_curve(case):
    name, cfg, run = case
    curve = TASKS[name].CURVE
    cfg_ro = dataclasses.replace(cfg.rollout, n_sequences=8)
    out = run.task.after_training(run.init_state().params, run.model, cfg_ro)
    assert isinstance(run.task.after_training_plan(run.model, cfg_ro), str)
    if curve is None:
        assert out == {}
        return
    assert out and all(k.startswith((curve["prefix"], curve["se_prefix"])) for k in out)
    assert all(math.isfinite(v) for v in out.values())
