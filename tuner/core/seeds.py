"""Finals: every seed of a cell trained in one vmapped program, each on its own system.

Seeds replicate over everything a claim generalises over (SPEC section 6), so final seed ``s``
changes three things (:func:`seed_config`):

- ``train.seed = s``: initialization and the training data stream;
- the task's system (``SYSTEM_SEED`` field of the task class, e.g. ``data.system_seed`` for the
  LDS) ``= base + 1 + s``: every seed trains on its own system draw, never the search's (``base``);
- ``train.eval_seed = FINALS_EVAL_SEED``: finals are scored on held-out data that played no part
  in choosing the learning rate.

The search trials (:func:`search_config`) use ``SEARCH_SEED``, which no final seed may take, on
the file's own system: the rate is chosen on a run disjoint from every final one.

A default-size model leaves most of a GPU idle, and separate seed runs each pay their own
dispatches (and, in separate processes, their own compiles). Stacking K seeds (states and
tasks) on a leading axis and vmapping the trainer's own step
(:func:`tuner.core.steps.train_steps_seeds`) runs them as one program with K times the work per
kernel; each seed's trajectory equals its separate run of :func:`seed_config`, which
``tests/test_speed_paths.py`` checks.

No Ray here: the finals stage calls :func:`train_seeds` inside one trial per cell
(``tuner.service.trials.train_cell_finals``), which checkpoints the stacked state and the
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

from data.registry import TASKS
from tuner.core import checkpoint, steps
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run, milestone_metrics

SEARCH_SEED = 1_000_000  # train.seed of every search trial; final seeds lie in [0, SEARCH_SEED)
FINALS_EVAL_SEED = 2**31 - 2  # held-out key of the finals (the search's is train.eval_seed)


def system_seed_field(cfg: RunConfig) -> str | None:
    """Dotted RunConfig field that picks the task's system (None: the task has no draw)."""
    return TASKS[cfg.task].SYSTEM_SEED


def get_field(cfg: RunConfig, dotted: str):
    """The value of a dotted RunConfig field (``data.system_seed``)."""
    head, _, rest = dotted.partition(".")
    return getattr(getattr(cfg, head), rest)


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The run of final seed ``seed``: own init/data seed, own system, finals' eval key."""
    if not 0 <= seed < SEARCH_SEED:
        raise ValueError(f"final seed {seed}; allowed: 0 <= seed < {SEARCH_SEED} (the search's)")
    over = {"train.seed": seed, "train.eval_seed": FINALS_EVAL_SEED}
    if (field := system_seed_field(cfg)) is not None:
        over[field] = get_field(cfg, field) + 1 + seed
    return replace(cfg, **over)


def search_config(cfg: RunConfig) -> RunConfig:
    """The run of a search trial: the file's own system, a seed no final run uses."""
    return replace(cfg, **{"train.seed": SEARCH_SEED})


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


class SeedRuns:
    """The K runs of a cell's finals: one model and step, K tasks (systems), stacked."""

    def __init__(self, cfg: RunConfig, seeds: Sequence[int]):
        if not seeds:
            raise ValueError("the finals need at least one seed")
        self.cfg, self.seeds = cfg, [int(s) for s in seeds]
        self.configs = [seed_config(cfg, s) for s in self.seeds]
        self.runs = [Run(c) for c in self.configs]  # cheap: tasks are host arrays, no compile
        self.run = self.runs[0]  # model, step spec and hparams are the same for every seed
        self.tasks = steps.stack([r.task for r in self.runs])

    def init_states(self) -> steps.TrainState:
        return steps.stack([r.init_state() for r in self.runs])


def restore(directory: str | Path, runs: SeedRuns) -> tuple[steps.TrainState, SeedsProgress]:
    """Stacked state and progress from a checkpoint saved with :func:`checkpoint_meta`."""
    states, meta = checkpoint.restore(directory, runs.init_states())
    return states, SeedsProgress(**meta["progress"])


def seed_state(states: steps.TrainState, i: int) -> steps.TrainState:
    """Seed ``i``'s state out of a stacked (vmapped) state."""
    return steps.unstack(states, i)


def train_seeds(cfg: RunConfig, seeds: Sequence[int],
                on_eval: Callable[[int, SeedsProgress, steps.TrainState], None] | None = None,
                *, runs: SeedRuns | None = None, states: steps.TrainState | None = None,
                progress: SeedsProgress | None = None,
                ) -> tuple[list[steps.TrainState], list[dict[str, Any]]]:
    """Trains ``seed_config(cfg, s)`` for every seed s, all seeds in one program.

    Every ``eval_every`` steps and at the end, ``on_eval(step, progress, states)`` is called
    once, with ``progress.last[i]`` holding seed i's metrics (those :meth:`Run.train` reports,
    plus ``diverged``). A seed whose loss turns non-finite is marked diverged and no longer
    evaluated; the others go on (vmapped seeds are independent, so a NaN cannot spread).
    ``states`` and ``progress`` resume a run from a checkpoint (default: fresh from the seeds).

    Returns the final per-seed states and last metrics, in the order of ``seeds``.
    """
    runs = runs or SeedRuns(cfg, seeds)
    run, t = runs.run, cfg.train
    if states is None:
        states = runs.init_states()
    progress = progress or SeedsProgress.start(len(runs.seeds))
    step = int(states.step[0])
    n_seeds = len(runs.seeds)
    while step < t.steps and not all(progress.diverged(i) for i in range(n_seeds)):
        n = min(t.eval_every - step % t.eval_every, t.steps - step)
        states, m = steps.train_steps_seeds(states, runs.tasks, run.hparams, spec=run.spec,
                                              n_steps=n)
        step += n
        losses, grad_norms = jax.device_get((m["loss"], m["grad_norm"]))
        lr_now = float(t.lr * steps.lr_multiplier(jnp.asarray(step - 1), run.hparams))
        for i, seed_run in enumerate(runs.runs):
            if progress.diverged(i):
                continue
            loss = float(losses[i])
            if not math.isfinite(loss):
                progress.last[i] = {"step": step, "train_loss": loss, "diverged": True}
                continue
            metrics, _ = seed_run.evaluate(seed_state(states, i))
            progress.last[i] = {
                "step": step, "train_loss": loss, "grad_norm": float(grad_norms[i]),
                "lr_now": lr_now, "diverged": False,
                **{f"eval/{k}": v for k, v in metrics.items()},
                **milestone_metrics(seed_run.task, progress.reached[i], step, metrics)}
        if on_eval is not None:
            on_eval(step, progress, states)
    return [seed_state(states, i) for i in range(n_seeds)], progress.last
