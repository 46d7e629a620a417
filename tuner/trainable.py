"""The Ray Tune trainable: one trial = one training run of a cell, checkpointed at every evaluation.

Tune calls :func:`train_trial` in a worker (reused across trials with ``reuse_actors=True``; the
jitted step lives at module level in ``tuner.trainer`` with the learning rate traced, so a reused
worker compiles once per cell shape). Every evaluation is reported together with a checkpoint of
the full train state, so a trial that is paused by ASHA, killed with its node, or interrupted with
the driver resumes exactly where it stopped. A diverging run (NaN loss) ends with
``diverged=True`` and a NaN metric: the searcher records it as FAIL and it can never be best.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

from data.registry import metric_names
from tuner import checkpoint, compile_cache, gpu_share
from tuner.config import RunConfig, replace
from tuner.loop import DivergedError, Run


def trial_config(base: RunConfig, config: dict[str, Any]) -> RunConfig:
    """The run of a trial: the experiment's base + the cell's overrides + lr (+ seed in finals)."""
    extra = {"train.lr": float(config["lr"])}
    if "seed" in config:
        extra["train.seed"] = int(config["seed"])
    return replace(base, **config["overrides"], **extra)


def _prepare_worker(config: dict[str, Any]) -> None:
    """Per-process JAX settings, before the first JAX computation of the worker: the GPU
    memory share of a fractional-GPU trial and the experiment's compilation cache."""
    if config.get("gpu_fraction"):
        gpu_share.configure(float(config["gpu_fraction"]))
    if config.get("jax_cache_dir"):
        compile_cache.enable(config["jax_cache_dir"])


def train_trial(config: dict[str, Any], base: RunConfig) -> None:
    """Tune function trainable; ``base`` is bound with ``tune.with_parameters``."""
    from ray import tune  # imported here: the training core must import without Ray

    _prepare_worker(config)
    cfg = trial_config(base, config)
    run = Run(cfg)
    state = run.init_state()
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state, meta = checkpoint.restore(d, state)
        run.milestones = dict(meta.get("milestones", {}))
    final = config.get("stage") == "final"
    last_step = int(state.step)

    def on_eval(metrics: dict[str, Any], st) -> None:
        nonlocal last_step
        last_step = metrics["step"]
        if (final and metrics["step"] == cfg.train.steps and cfg.rollout_after
                and getattr(run.task, "supports_rollout", False)):
            from tuner.rollout import evaluate_rollouts

            metrics |= evaluate_rollouts(st.params, run.task, run.model, cfg.rollout)
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(os.path.join(d, "state"), st,
                            {"step": metrics["step"], "milestones": run.milestones})
            tune.report({**metrics, "diverged": False},
                        checkpoint=tune.Checkpoint.from_directory(os.path.join(d, "state")))

    try:
        run.train(state, on_eval)
    except DivergedError as e:
        tune.report({"step": last_step, "diverged": True, "error": str(e),
                     **dict.fromkeys(metric_names(cfg.task), math.nan)})
