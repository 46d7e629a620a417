"""Device memory of the search's programs at the SPEC size: the CPU estimate against XLA's
accounting on the GPU, the measured peak of a real program, and what an out-of-memory error
leaves of a donated state (whether :class:`tuner.core.split.Splitter` can retry in place):
``python -m bench.memory_plan oom_split exp1 160`` runs a program too large for the card
through the splitter.

``python -m bench.memory_plan [exp1 exp2 ...]`` prints, per experiment's first shape: bytes per
member from the CPU estimate (einsum attention), from the GPU compile (cuDNN attention), and the
peak of a real population of ``--members`` run for a few steps. bench/README.md records them.
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

from tuner.core import steps
from tuner.core.population import Population
from tuner.core.seeds import search_config
from tuner.core.split import Splitter
from tuner.service.experiment import load
from tuner.service.plan.memory import measure_on_device
from tuner.service.trials import trial_config


def _cfgs(name: str, n: int):
    exp = load(name)
    cell, over = next(iter(exp.cells().items()))
    lrs = np.geomspace(exp.search.lr_low, exp.search.lr_high, n)
    return cell, [search_config(trial_config(exp.base, {"overrides": over, "lr": float(lr)}))
                  for lr in lrs]


def main(names: list[str], members: int = 8) -> None:
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind}; jax {jax.__version__}", flush=True)
    for name in names:
        cell, cfgs = _cfgs(name, members)
        t = time.perf_counter()
        mem = measure_on_device(cfgs[0])
        print(f"{name} {cell}: device compile per member {mem.per_member_bytes / 2**30:.3f} GiB,"
              f" fixed {mem.fixed_bytes / 2**30:.3f} GiB ({time.perf_counter() - t:.0f} s)",
              flush=True)
        pop = Population(cfgs)
        idx = list(range(members))
        tasks, hps = pop.stacked(idx)
        states = pop.init_states(idx)
        before = dev.memory_stats().get("peak_bytes_in_use", 0)
        states, _ = steps.train_steps_population(states, tasks, hps, spec=pop.spec, n_steps=10)
        jax.block_until_ready(states)
        peak = dev.memory_stats().get("peak_bytes_in_use", 0)
        print(f"  real program of {members}: peak {peak / 2**30:.2f} GiB (before "
              f"{before / 2**30:.2f}); compiled estimate {mem.bytes(members) / 2**30:.2f} GiB",
              flush=True)
        del states


def oom_donation(name: str = "exp1", members: int = 96) -> None:
    """A program of ``members`` too large for the card: is the donated state still there?"""
    _, cfgs = _cfgs(name, members)
    pop = Population(cfgs)
    idx = list(range(members))
    tasks, hps = pop.stacked(idx)
    states = pop.init_states(idx)
    try:
        steps.train_steps_population(states, tasks, hps, spec=pop.spec, n_steps=2)
        print("oom_donation: no out-of-memory error", flush=True)
    except Exception as e:
        leaf = jax.tree.leaves(states)[0]
        print(f"oom_donation: {type(e).__name__}: {str(e).splitlines()[0][:200]}; donated "
              f"state deleted: {leaf.is_deleted()}", flush=True)


def oom_split(name: str = "exp1", members: int = 160) -> None:
    """A program of ``members`` too large for the card through :class:`Splitter`, as the
    search runs it: does it split and carry on, and what does its host copy cost?"""
    _, cfgs = _cfgs(name, members)
    pop = Population(cfgs)
    idx = list(range(members))
    tasks, hps = pop.stacked(idx)
    states = pop.init_states(idx)
    jax.block_until_ready(states)
    t = time.perf_counter()
    host = jax.device_get(states)
    size = sum(x.nbytes for x in jax.tree.leaves(host))
    print(f"oom_split: host copy of {members} members' state: {size / 2**30:.2f} GiB in "
          f"{time.perf_counter() - t:.2f} s", flush=True)
    del host
    split = Splitter(name)
    t = time.perf_counter()
    try:
        out, m = split(steps.train_steps_population, states, tasks, hps, spec=pop.spec,
                       n_steps=2)
        jax.block_until_ready(out)
        loss = np.asarray(jax.device_get(m["loss"]))
        print(f"oom_split: ran in {split.pieces} pieces, {time.perf_counter() - t:.0f} s; "
              f"finite losses {np.isfinite(loss).all()} shape {loss.shape}; peak "
              f"{jax.devices()[0].memory_stats().get('peak_bytes_in_use', 0) / 2**30:.1f} GiB",
              flush=True)
    except Exception as e:
        print(f"oom_split: {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:] or ["exp1", "exp2", "exp3", "exp4"]
    if args[0] == "oom":
        oom_donation(*args[1:2])
    elif args[0] == "oom_split":
        oom_split(args[1], int(args[2]))
    else:
        main(args)
