"""Finals: every seed of a cell trained in one vmapped program.

A default-size model leaves most of a GPU idle, and separate seed runs each pay their own
dispatches (and, in separate processes, their own compiles). Stacking K seeds on a leading axis
and vmapping the trainer's own step (:func:`tuner.trainer.train_steps_seeds`) runs them as one
program with K times the work per kernel; each seed's trajectory equals its separate run (same
init key, same data stream, same HParams), which ``tests/test_speed_paths.py`` checks.

No Ray here: the finals stage calls :func:`train_seeds` inside one trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from tuner import trainer
from tuner.config import RunConfig
from tuner.loop import Run, milestone_metrics


def seed_state(states: trainer.TrainState, i: int) -> trainer.TrainState:
    """Seed ``i``'s state out of a stacked (vmapped) state."""
    return jax.tree.map(lambda x: x[i], states)


def train_seeds(cfg: RunConfig, seeds: Sequence[int],
                on_eval: Callable[[int, dict[str, Any], trainer.TrainState], None] | None = None,
                ) -> tuple[list[trainer.TrainState], list[dict[str, Any]]]:
    """Trains ``cfg`` once per seed (``cfg.train.seed`` replaced), all seeds in one program.

    Every ``eval_every`` steps and at the end, ``on_eval(seed, metrics, state)`` is called per
    seed with the same metrics :meth:`tuner.loop.Run.train` reports. A seed whose loss turns
    non-finite is marked ``diverged`` and gets no further callbacks; the others go on (vmapped
    seeds are independent, so a NaN in one cannot reach another).

    Returns the final per-seed states and last metrics, in the order of ``seeds``.
    """
    if not seeds:
        raise ValueError("train_seeds needs at least one seed")
    run = Run(cfg)
    t = cfg.train
    states = trainer.init_states(run.spec, run.task, list(seeds))
    last: list[dict[str, Any]] = [{} for _ in seeds]
    diverged = [False] * len(seeds)
    reached: list[dict[str, int]] = [{} for _ in seeds]
    step = 0
    while step < t.steps:
        n = min(t.eval_every - step % t.eval_every, t.steps - step)
        states, m = trainer.train_steps_seeds(states, run.task, run.hparams, spec=run.spec,
                                              n_steps=n)
        step += n
        losses, grad_norms = jax.device_get((m["loss"], m["grad_norm"]))
        lr_now = float(t.lr * trainer.lr_multiplier(jnp.asarray(step - 1), run.hparams))
        for i, seed in enumerate(seeds):
            if diverged[i]:
                continue
            loss = float(losses[i])
            if not math.isfinite(loss):
                diverged[i] = True
                last[i] = {"step": step, "train_loss": loss, "diverged": True}
                continue
            state = seed_state(states, i)
            metrics, _ = trainer.evaluate(state.params, run.task, run.model, t.eval_batch)
            last[i] = {"step": step, "train_loss": loss, "grad_norm": float(grad_norms[i]),
                       "lr_now": lr_now, **{f"eval/{k}": v for k, v in metrics.items()},
                       **milestone_metrics(run.task, reached[i], step, metrics)}
            if on_eval is not None:
                on_eval(seed, last[i], state)
    return [seed_state(states, i) for i in range(len(seeds))], last
