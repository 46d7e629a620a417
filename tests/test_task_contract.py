"""Every task of the registry implements the contract of data.task.Task, checked the same way
for each (like Optuna's one sampler test over every sampler)."""

from __future__ import annotations

import dataclasses
import math
import pickle

import jax
import numpy as np
import pytest

from data.registry import DEFAULT_TASK, SECTIONS, TASKS, gather_sections, metric_mode
from data.task import Task
from tuner.core import config, steps
from tuner.core.config import RunConfig, replace
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
    """The task gets the whole RunConfig and reads its own sections (the case's rollouts are
    8 sequences)."""
    name, cfg, run = case
    curve = TASKS[name].CURVE
    out = run.task.after_training(run.init_state().params, run.model, cfg)
    assert isinstance(run.task.after_training_plan(run.model, cfg), str)
    if curve is None:
        assert out == {}
        return
    assert out and all(k.startswith((curve["prefix"], curve["se_prefix"])) for k in out)
    assert all(math.isfinite(v) for v in out.values())


# ---- the config each task owns ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_declares_its_sections_and_runconfig_has_them(name):
    """``CONFIG``: section name -> frozen dataclass; RunConfig has the field, defaulting to the
    section's default instance, and the task's ``check_config`` accepts the default run."""
    cls = TASKS[name]
    assert cls.CONFIG and all(isinstance(k, str) for k in cls.CONFIG)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for section, section_cls in cls.CONFIG.items():
        assert dataclasses.is_dataclass(section_cls) and section_cls.__dataclass_params__.frozen
        assert fields[section].type is section_cls
        assert getattr(RunConfig(), section) == section_cls()
        assert SECTIONS[section] == (name, section_cls)
    cls.check_config(replace(RunConfig(), task=name))


def test_runconfig_fields_are_model_train_the_sections_then_the_run():
    names = [f.name for f in dataclasses.fields(RunConfig)]
    assert names == ["model", "train", *SECTIONS, "task", "out_dir", "rollout_after"]
    assert list(SECTIONS) == [s for cls in TASKS.values() for s in cls.CONFIG]
    assert DEFAULT_TASK in TASKS and RunConfig().task == DEFAULT_TASK


def test_runconfig_round_trips_like_a_written_dataclass():
    """Ray pickles configs and the CLI writes asdict: the made class behaves as a written one."""
    cfg = replace(RunConfig(), **{"data.lambda_val": 0.96, "rollout.horizons": (1, 4),
                                  "train.lr": 3e-4, "out_dir": "x"})
    assert RunConfig.__module__ == "tuner.core.config" and RunConfig.__qualname__ == "RunConfig"
    assert config.RunConfig is RunConfig
    back = pickle.loads(pickle.dumps(cfg))
    assert type(back) is RunConfig and back == cfg and hash(back) == hash(cfg)
    assert back != RunConfig()
    d = dataclasses.asdict(cfg)
    assert d["data"]["lambda_val"] == 0.96 and d["rollout"]["horizons"] == (1, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.task = "x"
    with pytest.raises(ValueError, match=r"unknown field.*rollout\.nope"):
        replace(cfg, **{"rollout.nope": 1})


def test_runconfig_calls_the_task_check(monkeypatch):
    """Only the run's own task checks the run, at construction."""
    seen = []
    for name, cls in TASKS.items():
        monkeypatch.setattr(cls, "check_config",
                            classmethod(lambda c, cfg, name=name: seen.append((name, cfg.task))))
    RunConfig()
    assert seen == [(DEFAULT_TASK, DEFAULT_TASK)]


def test_a_section_name_two_tasks_use_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Section:
        x: int = 0

    a = type("A", (), {"CONFIG": {"shared": Section}})
    b = type("B", (), {"CONFIG": {"own": Section, "shared": Section}})
    assert list(gather_sections({"a": a})) == ["shared"]
    with pytest.raises(ValueError, match="'shared' of task 'b' is already task 'a'"):
        gather_sections({"a": a, "b": b})
