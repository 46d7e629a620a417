"""The training loop of one run: steps in chunks between evaluations, a callback at each.

The caller decides what an evaluation means (print, write metrics, checkpoint, report to Tune),
so the same loop serves the one-run CLI and the Ray trainable without importing Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax

from data.registry import TASKS
from tuner.core import steps
from tuner.core.config import RunConfig


class DivergedError(FloatingPointError):
    """The loss became NaN/inf: the trial failed (and must never be picked as best)."""


def milestone_metrics(task, reached: dict[str, int], step: int,
                      metrics: dict[str, float]) -> dict[str, float]:
    """Updates ``reached`` (milestone -> first step) from one evaluation; returns them as
    ``eval/<milestone>`` entries, NaN while not reached. ``reached`` is part of a run's
    checkpoint metadata, so a resumed run keeps the step it first got there."""
    for name, metric, threshold in task.MILESTONES:
        if name not in reached and metrics[metric] >= threshold:
            reached[name] = step
    return {f"eval/{name}": float(reached.get(name, math.nan)) for name, _, _ in task.MILESTONES}


class Run:
    """One run's fixed parts: task, model, the static step spec and the traced hyperparameters."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.task = TASKS[cfg.task].from_run_config(cfg)
        self.model = steps.build_model(cfg, self.task)
        self.spec = steps.StepSpec.from_config(self.model, cfg.train)
        self.hparams = steps.HParams.from_config(cfg.train)
        self.milestones: dict[str, int] = {}  # task milestone -> first step reached (resumable)

    def init_state(self) -> steps.TrainState:
        return steps.init_state(self.spec, self.task, self.cfg.train.seed)

    def evaluate(self, state: steps.TrainState):
        return steps.evaluate(state.params, self.task, self.model, self.cfg.train.eval_batch,
                                self.cfg.train.eval_seed)

    def train(self, state: steps.TrainState,
              on_eval: Callable[[dict[str, Any], steps.TrainState], None]
              ) -> steps.TrainState:
        """Trains from ``state`` to ``train.steps``, calling ``on_eval(metrics, state)`` every
        ``eval_every`` steps and at the end. Raises DivergedError on a non-finite loss."""
        t = self.cfg.train
        step = int(state.step)
        while step < t.steps:
            n = min(t.eval_every - step % t.eval_every, t.steps - step)
            state, m = steps.train_steps(state, self.task, self.hparams, spec=self.spec,
                                           n_steps=n)
            step += n
            loss = float(m["loss"])
            if not math.isfinite(loss):
                raise DivergedError(f"loss is {loss} at step {step} (lr={t.lr:g})")
            metrics, curve = self.evaluate(state)
            on_eval({"step": step, "train_loss": loss, "grad_norm": float(m["grad_norm"]),
                     "lr_now": float(t.lr * steps.lr_multiplier(jax.numpy.asarray(step - 1),
                                                                  self.hparams)),
                     **{f"eval/{k}": v for k, v in metrics.items()},
                     **milestone_metrics(self.task, self.milestones, step, metrics)}, state)
        return state
