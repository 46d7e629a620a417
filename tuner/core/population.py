"""Train a population: K runs that compile to one step (learning rates of one cell, or of cells
whose tasks differ only in their arrays), vmapped in one program, members stopped at rungs.

One search trial alone leaves an accelerator mostly idle (bench/README.md: packing separate
trials on a GPU adds nothing, one vmapped program does), so the search trains a cell's rates
together. Which members stop is the caller's rule (``halve``, the service's successive halving),
decided on a whole evaluation at once, so the outcome never depends on the order in which
results arrive. A stopped or diverged member either leaves the program (``compact``: the
stacked state is cut to the survivors, a smaller program compiled once per population size) or
stays in it unevaluated (masked: one program, paying for the stopped members' steps).
:func:`compact_by_default` picks by backend from measurement (bench/README.md): on a GPU a
population's compute dominates and cutting it pays; on a CPU, with the small models run there,
compiling the smaller programs cost more than the steps they save.

Each member's trajectory equals its separate run (``tests/test_population.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from tuner.core import steps
from tuner.core.config import RunConfig
from tuner.core.loop import Progress, Run, milestone_metrics
from tuner.core.split import Splitter

# halve(step, previous evaluation's step, progress) -> members to stop now (alive ones)
Halving = Callable[[int, int, Progress], set[int]]
# on_eval(step, progress, stacked state of progress.alive) after each evaluation and halving
OnEval = Callable[[int, Progress, steps.TrainState], None]


class Population:
    """The members' fixed parts: one run each (own task, model config and hyperparameters),
    checked to share the static step and the evaluation schedule.

    Args:
        configs: Member i's full run config (its cell's settings and its learning rate).
    """

    def __init__(self, configs: Sequence[RunConfig]):
        if not configs:
            raise ValueError("a population needs at least one member")
        self.configs = list(configs)
        self.runs = [Run(c) for c in self.configs]  # cheap: tasks are host arrays
        self.spec = self.runs[0].spec
        train = self.configs[0].train
        for i, (run, cfg) in enumerate(zip(self.runs, self.configs, strict=True)):
            if run.spec != self.spec:
                raise ValueError(f"member {i} compiles to another step than member 0: a "
                                 "population shares one program (same model and batch)")
            if (cfg.train.steps, cfg.train.eval_every) != (train.steps, train.eval_every):
                raise ValueError(f"member {i} has another budget or evaluation interval")
        self.train = train

    def __len__(self) -> int:
        return len(self.runs)

    def init_states(self, members: Sequence[int]) -> steps.TrainState:
        """Fresh states of ``members``, stacked in that order."""
        return steps.stack([self.runs[i].init_state() for i in members])

    def stacked(self, members: Sequence[int]) -> tuple[Any, steps.HParams]:
        """Tasks and hyperparameters of ``members``, stacked in that order."""
        return (steps.stack([self.runs[i].task for i in members]),
                steps.stack([self.runs[i].hparams for i in members]))


def compact_by_default() -> bool:
    """Whether stopped members leave the program on this backend (module docstring)."""
    return jax.default_backend() != "cpu"


def held_members(progress: Progress, n: int, compact: bool) -> list[int]:
    """The members a checkpointed state holds, in order: the live ones where stopped members
    leave the program, else all ``n``."""
    return list(progress.alive) if compact and progress.alive is not None else list(range(n))


def take(states: steps.TrainState, positions: Sequence[int]) -> steps.TrainState:
    """The members at ``positions`` of a stacked state, in that order."""
    index = jnp.asarray(list(positions), jnp.int32)
    return jax.tree.map(lambda x: x[index], states)


def train_population(pop: Population, on_eval: OnEval, halve: Halving, *,
                     states: steps.TrainState | None = None,
                     progress: Progress | None = None, compact: bool = True) -> Progress:
    """Trains every live member to ``train.steps`` in one program; evaluates each live member
    every ``eval_every`` steps and at the end (the metrics :meth:`Run.train` reports, in
    ``progress.last[i]``), then stops the members ``halve`` names (``stopped: True`` in their
    last metrics) and the diverged ones, then calls ``on_eval``.

    ``states``/``progress`` resume from a checkpoint: ``states`` holds
    :func:`held_members` in that order (default: a fresh start of every member). ``compact``:
    stopped members leave the program (module docstring). Returns the final progress.
    """
    progress = progress or Progress.start(len(pop))
    split = Splitter(f"{pop.configs[0].model}")  # out of memory: the program in pieces
    held = held_members(progress, len(pop), compact)  # members in ``states``, in order
    if progress.alive is None:
        progress.alive = list(range(len(pop)))
    states = pop.init_states(held) if states is None else states
    tasks, hps = pop.stacked(held)
    t = pop.train
    step = int(jnp.ravel(states.step)[0]) if held else t.steps
    while step < t.steps and progress.alive:
        n = min(t.eval_every - step % t.eval_every, t.steps - step)
        states, m = split(steps.train_steps_population, states, tasks, hps, spec=pop.spec,
                          n_steps=n)
        previous, step = step, step + n
        losses, grad_norms = jax.device_get((m["loss"], m["grad_norm"]))
        multiplier = float(steps.lr_multiplier(jnp.asarray(step - 1), pop.runs[0].hparams))
        for pos, i in enumerate(held):
            if i not in progress.alive:
                continue  # stopped earlier, kept in a masked program
            run, loss = pop.runs[i], float(losses[pos])
            if not math.isfinite(loss):
                progress.last[i] = {"step": step, "train_loss": loss, "diverged": True}
                continue
            metrics, _ = run.evaluate(steps.unstack(states, pos))
            progress.last[i] = {
                "step": step, "train_loss": loss, "grad_norm": float(grad_norms[pos]),
                "lr_now": run.cfg.train.lr * multiplier, "diverged": False,
                **{f"eval/{k}": v for k, v in metrics.items()},
                **milestone_metrics(run.task, progress.reached[i], step, metrics)}
        live = [i for i in progress.alive if not progress.diverged(i)]
        progress.alive = live
        stop = halve(step, previous, progress) if step < t.steps else set()
        for i in stop:
            progress.last[i]["stopped"] = True
        progress.alive = [i for i in live if i not in stop]
        if compact and progress.alive and progress.alive != held:
            states = take(states, [held.index(i) for i in progress.alive])
            held = list(progress.alive)
            tasks, hps = pop.stacked(held)
        on_eval(step, progress, states)
    return progress
