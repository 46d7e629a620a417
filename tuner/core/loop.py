"""The one training loop: steps in chunks between evaluations, a callback at each, for one run
or for K seeds vmapped in one program.

A default-size model leaves most of a GPU idle, and separate seed runs each pay their own
dispatches and compiles, so the finals stack K seeds (states and tasks, each seed its own
system: :mod:`tuner.core.seeds`) and train them with :func:`tuner.core.steps.train_steps_seeds`;
each seed's trajectory equals its separate run (``tests/test_speed_paths.py``). A single run
goes through the same loop with K = 1 and the plain step.

The caller decides what an evaluation means (print, write metrics, checkpoint, report to Tune),
so the loop serves the one-run CLI and the Ray trials without importing Ray.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from data.registry import TASKS
from tuner.core import diagnostics, steps
from tuner.core import seeds as seeding
from tuner.core.config import RunConfig
from tuner.core.split import Splitter


class DivergedError(FloatingPointError):
    """The loss became NaN/inf: the trial failed (and must never be picked as best)."""


@dataclasses.dataclass
class Progress:
    """Per seed, what a resumed run needs besides its train state (JSON-serialisable; saved
    with every checkpoint, :func:`tuner.core.checkpoint.save`)."""

    last: list[dict[str, Any]]  # last evaluation's metrics (``diverged`` True once NaN)
    reached: list[dict[str, int]]  # task milestones (e.g. grokking step) -> first step reached
    # a population (tuner.core.population): members still training, in the stacked state's
    # order; None for seeds and single runs, which never stop a member early
    alive: list[int] | None = None

    @staticmethod
    def start(n_seeds: int) -> Progress:
        return Progress([{} for _ in range(n_seeds)], [{} for _ in range(n_seeds)])

    def diverged(self, i: int) -> bool:
        return bool(self.last[i].get("diverged"))


def milestone_metrics(task, reached: dict[str, int], step: int,
                      metrics: dict[str, float]) -> dict[str, float]:
    """Updates ``reached`` (milestone -> first step) from one evaluation; returns them as
    ``eval/<milestone>`` entries, NaN while not reached."""
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

    def init_state(self) -> steps.TrainState:
        return steps.init_state(self.spec, self.task, self.cfg.train.seed)

    def evaluate(self, state: steps.TrainState):
        return steps.evaluate(state.params, self.task, self.model, self.cfg.train.eval_batch,
                              self.cfg.train.eval_seed)

    def diagnostics(self, state: steps.TrainState) -> dict[str, float]:
        """``train.diagnostics`` on ``state``, as ``diag/<key>`` metrics."""
        t = self.cfg.train
        out = diagnostics.compute(state, self.task, self.hparams, spec=self.spec,
                                  names=tuple(t.diagnostics), n_probes=t.diagnostics_probes)
        return {f"diag/{k}": float(v) for k, v in out.items()}

    def train(self, state: steps.TrainState,
              on_eval: Callable[[dict[str, Any], steps.TrainState], None],
              progress: Progress | None = None) -> steps.TrainState:
        """Trains from ``state`` to ``train.steps``, calling ``on_eval(metrics, state)`` every
        ``eval_every`` steps and at the end (``progress``: resumed milestones). Raises
        DivergedError on a non-finite loss."""
        progress = progress or Progress.start(1)

        def chunk(st, n):
            st, m = steps.train_steps(st, self.task, self.hparams, spec=self.spec, n_steps=n)
            return st, m["loss"][None], m["grad_norm"][None]

        state = _loop(self.cfg, [self], state, chunk, lambda st, i: st, progress,
                      lambda step, prog, st: on_eval(prog.last[0], st))
        if progress.diverged(0):
            last = progress.last[0]
            raise DivergedError(f"loss is {last['train_loss']} at step {last['step']} "
                                f"(lr={self.cfg.train.lr:g})")
        return state


class SeedRuns:
    """The K runs of a cell's finals (:func:`tuner.core.seeds.seed_config`): one model and
    step, K tasks (systems), stacked for one vmapped program."""

    def __init__(self, cfg: RunConfig, seeds: Sequence[int]):
        if not seeds:
            raise ValueError("the finals need at least one seed")
        self.cfg, self.seeds = cfg, [int(s) for s in seeds]
        self.configs = [seeding.seed_config(cfg, s) for s in self.seeds]
        self.runs = [Run(c) for c in self.configs]  # cheap: tasks are host arrays, no compile
        self.run = self.runs[0]  # model, step spec and hparams are the same for every seed
        self.tasks = steps.stack([r.task for r in self.runs])

    def init_states(self) -> steps.TrainState:
        return steps.stack([r.init_state() for r in self.runs])


class MemberRuns:
    """Runs of one program whose members differ in task, seed and hyperparameters but compile
    to one step: the finals' seeds of the cells of one shape (``tuner.service.plan``), each
    member :func:`tuner.core.seeds.seed_config` of its cell at the cell's rate.

    Args:
        configs: Member i's full run config.
    """

    def __init__(self, configs: Sequence[RunConfig]):
        if not configs:
            raise ValueError("a program needs at least one member")
        self.configs = list(configs)
        self.runs = [Run(c) for c in self.configs]
        self.run = self.runs[0]
        t0 = self.configs[0].train
        for i, (run, c) in enumerate(zip(self.runs, self.configs, strict=True)):
            if run.spec != self.run.spec:
                raise ValueError(f"member {i} compiles to another step than member 0")
            if (c.train.steps, c.train.eval_every, c.train.diagnostics_every) != (
                    t0.steps, t0.eval_every, t0.diagnostics_every):
                raise ValueError(f"member {i} has another budget or evaluation schedule")
        self.tasks = steps.stack([r.task for r in self.runs])
        self.hparams = steps.stack([r.hparams for r in self.runs])

    def init_states(self) -> steps.TrainState:
        return steps.stack([r.init_state() for r in self.runs])


def train_members(runs: MemberRuns,
                  on_eval: Callable[[int, Progress, steps.TrainState], None] | None = None,
                  *, states: steps.TrainState | None = None, progress: Progress | None = None,
                  splitter: Splitter | None = None) -> Progress:
    """:func:`train_seeds` for members of several cells (:class:`MemberRuns`): each member its
    own task and rate, all in one program (``train_steps_population``), split into pieces if
    the device runs out of memory (:class:`tuner.core.split.Splitter`). Each member's
    trajectory equals its own run (``tests/test_shared_finals.py``)."""
    states = runs.init_states() if states is None else states
    progress = progress or Progress.start(len(runs.runs))
    split = splitter or Splitter(f"{runs.configs[0].model}")

    def chunk(sts, n):
        sts, m = split(steps.train_steps_population, sts, runs.tasks, runs.hparams,
                       spec=runs.run.spec, n_steps=n)
        return sts, m["loss"], m["grad_norm"]

    _loop(runs.configs[0], runs.runs, states, chunk, seed_state, progress,
          on_eval or (lambda *_: None))
    return progress


def seed_state(states: steps.TrainState, i: int) -> steps.TrainState:
    """Seed ``i``'s state out of a stacked (vmapped) state."""
    return steps.unstack(states, i)


def train_seeds(cfg: RunConfig, seeds: Sequence[int],
                on_eval: Callable[[int, Progress, steps.TrainState], None] | None = None,
                *, runs: SeedRuns | None = None, states: steps.TrainState | None = None,
                progress: Progress | None = None,
                ) -> tuple[list[steps.TrainState], list[dict[str, Any]]]:
    """Trains ``seed_config(cfg, s)`` for every seed s, all seeds in one program.

    Every ``eval_every`` steps and at the end, ``on_eval(step, progress, states)`` is called
    once, with ``progress.last[i]`` holding seed i's metrics (those :meth:`Run.train` reports).
    A seed whose loss turns non-finite is marked diverged and no longer evaluated; the others go
    on (vmapped seeds are independent, so a NaN cannot spread). ``states`` and ``progress``
    resume from a checkpoint (default: fresh from the seeds).

    Returns the final per-seed states and last metrics, in the order of ``seeds``.
    """
    runs = runs or SeedRuns(cfg, seeds)
    run = runs.run
    states = runs.init_states() if states is None else states
    progress = progress or Progress.start(len(runs.seeds))

    def chunk(sts, n):
        sts, m = steps.train_steps_seeds(sts, runs.tasks, run.hparams, spec=run.spec, n_steps=n)
        return sts, m["loss"], m["grad_norm"]

    states = _loop(cfg, runs.runs, states, chunk, seed_state, progress,
                   on_eval or (lambda *_: None))
    return [seed_state(states, i) for i in range(len(runs.seeds))], progress.last


def _loop(cfg: RunConfig, runs: Sequence[Run], states, chunk, state_of, progress: Progress,
          on_eval) -> Any:
    """Chunks of steps up to each evaluation, then every live seed's evaluation, then
    ``on_eval(step, progress, states)``; stops at ``train.steps`` or when every seed diverged.

    ``chunk(states, n) -> (states, losses_K, grad_norms_K)`` runs n steps; ``state_of(states,
    i)`` is seed i's state; ``runs[i]`` evaluates seed i on its own task.
    """
    t = cfg.train
    step = int(jnp.ravel(states.step)[0])
    while step < t.steps and not all(progress.diverged(i) for i in range(len(runs))):
        n = min(t.eval_every - step % t.eval_every, t.steps - step)
        states, losses, grad_norms = chunk(states, n)
        step += n
        evaluate_live(runs, list(enumerate(range(len(runs)))),
                      lambda pos, sts=states: state_of(sts, pos),
                      jax.device_get((losses, grad_norms)), step, progress)
        if not all(progress.diverged(i) for i in range(len(runs))) or len(runs) > 1:
            on_eval(step, progress, states)
    return states


def evaluate_live(runs: Sequence[Run], held: Sequence[tuple[int, int]], state_of,
                  losses_and_norms, step: int, progress: Progress) -> None:
    """The evaluation after a chunk of steps, one copy for seeds and populations: each live
    member's metrics (those :meth:`Run.train` reports) in ``progress.last[i]``, or
    ``diverged`` where its loss is no longer finite (then it is not evaluated).

    ``held``: (position in the stacked state, member index) of the members the state holds;
    ``state_of(position)`` is that member's state; ``losses_and_norms``: the chunk's mean loss
    and gradient norm per position (host arrays). A member is live unless it diverged or, in a
    population, stopped (not in ``progress.alive``). ``lr_now`` is each member's own rate at
    the chunk's last step: members of one program may differ in warmup and schedule.
    """
    losses, grad_norms = losses_and_norms
    for pos, i in held:
        if progress.diverged(i) or (progress.alive is not None and i not in progress.alive):
            continue  # diverged, or stopped earlier and kept in a masked program
        run, loss = runs[i], float(losses[pos])
        if not math.isfinite(loss):
            progress.last[i] = {"step": step, "train_loss": loss, "diverged": True}
            continue
        state = state_of(pos)
        metrics, _ = run.evaluate(state)
        t = run.cfg.train
        progress.last[i] = {
            "step": step, "train_loss": loss, "grad_norm": float(grad_norms[pos]),
            "lr_now": float(t.lr * steps.lr_multiplier(jnp.asarray(step - 1), run.hparams)),
            "diverged": False, **{f"eval/{k}": v for k, v in metrics.items()},
            **milestone_metrics(run.task, progress.reached[i], step, metrics)}
        if t.diagnostics_due(step):  # expensive: only at the configured interval
            progress.last[i] |= run.diagnostics(state)
