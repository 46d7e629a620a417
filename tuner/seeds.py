"""Finals: every seed of a cell trained in one vmapped program.

A default-size model leaves most of a GPU idle, and separate seed runs each pay their own
dispatches (and, in separate processes, their own compiles). Stacking K seeds on a leading axis
and vmapping the trainer's own step (:func:`tuner.trainer.train_steps_seeds`) runs them as one
program with K times the work per kernel; each seed's trajectory equals its separate run (same
init key, same data stream, same HParams), which ``tests/test_speed_paths.py`` checks.

No Ray here: the finals stage calls :func:`train_seeds` inside one trial per cell
(``tuner.trainable.train_cell_finals``), which checkpoints the stacked state and the
:class:`SeedsProgress` at every evaluation, so an interrupted cell resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from tuner import checkpoint, trainer
from tuner.config import RunConfig
from tuner.loop import Run, milestone_metrics


@dataclasses.dataclass
class SeedsProgress:
    """Per seed, what a resumed run needs besides the stacked state (JSON-serialisable)."""

    last: list[dict[str, Any]]  # last evaluation's metrics (``diverged`` True once NaN)
    reached: list[dict[str, int]]  # task milestones (e.g. grokking step) already reached

    @staticmethod
    def start(n_seeds: int) -> SeedsProgress:
        return SeedsProgress([{} for _ in range(n_seeds)], [{} for _ in range(n_seeds)])

    def diverged(self, i: int) -> bool:
        return bool(self.last[i].get("diverged"))


def checkpoint_meta(step: int, progress: SeedsProgress) -> dict[str, Any]:
    """What a finals checkpoint stores beside the stacked state (see :func:`restore`)."""
    return {"step": step, "progress": dataclasses.asdict(progress)}


def restore(directory: str | Path, run: Run, seeds: Sequence[int]
            ) -> tuple[trainer.TrainState, SeedsProgress]:
    """Stacked state and progress from a checkpoint saved with :func:`checkpoint_meta`."""
    like = trainer.init_states(run.spec, run.task, list(seeds))
    states, meta = checkpoint.restore(directory, like)
    return states, SeedsProgress(**meta["progress"])


def seed_state(states: trainer.TrainState, i: int) -> trainer.TrainState:
    """Seed ``i``'s state out of a stacked (vmapped) state."""
    return jax.tree.map(lambda x: x[i], states)


def train_seeds(cfg: RunConfig, seeds: Sequence[int],
                on_eval: Callable[[int, SeedsProgress, trainer.TrainState], None] | None = None,
                *, run: Run | None = None, states: trainer.TrainState | None = None,
                progress: SeedsProgress | None = None,
                ) -> tuple[list[trainer.TrainState], list[dict[str, Any]]]:
    """Trains ``cfg`` once per seed (``cfg.train.seed`` replaced), all seeds in one program.

    Every ``eval_every`` steps and at the end, ``on_eval(step, progress, states)`` is called
    once, with ``progress.last[i]`` holding seed i's metrics (those :meth:`Run.train` reports,
    plus ``diverged``). A seed whose loss turns non-finite is marked diverged and no longer
    evaluated; the others go on (vmapped seeds are independent, so a NaN cannot spread).
    ``states`` and ``progress`` resume a run from a checkpoint (default: fresh from the seeds).

    Returns the final per-seed states and last metrics, in the order of ``seeds``.
    """
    if not seeds:
        raise ValueError("train_seeds needs at least one seed")
    run = run or Run(cfg)
    t = cfg.train
    if states is None:
        states = trainer.init_states(run.spec, run.task, list(seeds))
    progress = progress or SeedsProgress.start(len(seeds))
    step = int(states.step[0])
    while step < t.steps and not all(progress.diverged(i) for i in range(len(seeds))):
        n = min(t.eval_every - step % t.eval_every, t.steps - step)
        states, m = trainer.train_steps_seeds(states, run.task, run.hparams, spec=run.spec,
                                              n_steps=n)
        step += n
        losses, grad_norms = jax.device_get((m["loss"], m["grad_norm"]))
        lr_now = float(t.lr * trainer.lr_multiplier(jnp.asarray(step - 1), run.hparams))
        for i in range(len(seeds)):
            if progress.diverged(i):
                continue
            loss = float(losses[i])
            if not math.isfinite(loss):
                progress.last[i] = {"step": step, "train_loss": loss, "diverged": True}
                continue
            metrics, _ = trainer.evaluate(seed_state(states, i).params, run.task, run.model,
                                          t.eval_batch)
            progress.last[i] = {
                "step": step, "train_loss": loss, "grad_norm": float(grad_norms[i]),
                "lr_now": lr_now, "diverged": False,
                **{f"eval/{k}": v for k, v in metrics.items()},
                **milestone_metrics(run.task, progress.reached[i], step, metrics)}
        if on_eval is not None:
            on_eval(step, progress, states)
    return [seed_state(states, i) for i in range(len(seeds))], progress.last
