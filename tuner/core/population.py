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

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from tuner.core import steps
from tuner.core.config import RunConfig
from tuner.core.loop import Progress, Run, evaluate_live
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
        key = program_key(self.runs[0])
        for i, run in enumerate(self.runs):
            differs = [name for name, a, b in zip(PROGRAM_KEY, program_key(run), key,
                                                  strict=True) if a != b]
            if differs:
                raise ValueError(f"member {i} compiles to another step than member 0 (its "
                                 f"{', '.join(differs)} differ): a population shares one "
                                 "program")
        self.train = self.configs[0].train

    def __len__(self) -> int:
        return len(self.runs)

    def init_states(self, members: Sequence[int]) -> steps.TrainState:
        """Fresh states of ``members``, stacked in that order."""
        return steps.stack([self.runs[i].init_state() for i in members])

    def stacked(self, members: Sequence[int]) -> tuple[Any, steps.HParams]:
        """Tasks and hyperparameters of ``members``, stacked in that order."""
        return (steps.stack([self.runs[i].task for i in members]),
                steps.stack([self.runs[i].hparams for i in members]))


PROGRAM_KEY = ("step", "task", "task arrays", "train.steps", "train.eval_every")


def program_key(run: Run) -> tuple:
    """Everything one population program holds static (``PROGRAM_KEY``): the step (model,
    batch, optimizer), the task's type and its arrays' shapes (stacked, the first member's
    static fields kept), and the loop's schedule (budget, evaluations). Runs with equal keys
    may train in one program; :func:`tuner.service.shapes.shapes` groups cells by it, so what
    it groups a population accepts. Not the task's static fields: they hold its config (e.g.
    ``lambda_val``), which reaches the program through the arrays."""
    leaves = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(run.task))
    t = run.cfg.train
    return (run.spec, type(run.task).__name__, leaves, t.steps, t.eval_every)


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
        evaluate_live(pop.runs, list(enumerate(held)),
                      lambda pos, sts=states: steps.unstack(sts, pos),
                      jax.device_get((m["loss"], m["grad_norm"])), step, progress)
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
