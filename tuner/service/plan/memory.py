"""A program's device memory as a function of its members: ``fixed + n * per_member`` bytes.

The population search and the shared finals train n members (rates, seeds, cells of one shape)
in one vmapped program, so the program's memory is what decides how many members one program
may hold. It is linear in n: every buffer of the step (parameters, optimizer moments, batch,
activations) gains the member axis, and XLA's own accounting of the step says so (issue 30:
1.75 GB for one member, 14.0 GB for 8, 98 GB for 56 at the SPEC size).

Two sources, in order of trust:

- measured on the device (:func:`measure_on_device`): XLA's buffer assignment of the real step,
  compiled for the trial's backend (cuDNN attention on a GPU), for 1 and 2 members; compiled
  only, never run, so measuring cannot itself run out of memory;
- estimated on the CPU from the config (:func:`estimate`): the same compile for the CPU
  backend with the attention's plain einsum path, which holds every T x T score tensor that
  cuDNN's fused kernel never writes out. It is therefore an upper bound of what the GPU
  program asks for (safe by construction), by about a third at the SPEC size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from tuner.core import steps
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Bytes of a program of ``n`` members: ``fixed_bytes + n * per_member_bytes``."""

    fixed_bytes: int
    per_member_bytes: int
    source: str  # "device" (compiled for the trial's backend) or "estimate" (CPU, einsum)

    def bytes(self, n: int) -> int:
        return self.fixed_bytes + n * self.per_member_bytes

    def members_within(self, budget_bytes: float) -> int:
        """The most members whose program fits ``budget_bytes`` (0: not even one)."""
        if self.per_member_bytes <= 0:
            return 1 << 30
        return max(0, math.floor((budget_bytes - self.fixed_bytes) / self.per_member_bytes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ProgramMemory:
        return ProgramMemory(int(d["fixed_bytes"]), int(d["per_member_bytes"]), str(d["source"]))


def program_bytes(cfg: RunConfig, n: int, backend: str | None = None) -> int:
    """XLA's bytes for one chunk of ``n`` members of ``cfg``'s step on ``backend`` (arguments,
    outputs not aliased to the donated state, and temporaries), from a compile alone."""
    run = Run(cfg)
    state = jax.eval_shape(run.init_state)
    stack = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype), tree)
    tasks = stack(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), run.task))
    hps = stack(jax.eval_shape(lambda: run.hparams))
    lowered = steps.train_steps_population.trace(
        stack(state), tasks, hps, spec=run.spec, n_steps=2).lower(
        lowering_platforms=(backend,) if backend else None)
    m = lowered.compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def _model(fixed1: int, two: int, source: str) -> ProgramMemory:
    per = max(two - fixed1, 1)
    return ProgramMemory(max(0, fixed1 - per), per, source)


def estimate(cfg: RunConfig) -> ProgramMemory:
    """The CPU upper bound of a program's memory (module docstring); call in a process whose
    JAX backend is the CPU (the driver)."""
    cpu = replace(cfg, **{"model.attention_impl": None})  # cuDNN's kernel exists on GPUs only
    return _model(program_bytes(cpu, 1), program_bytes(cpu, 2), "estimate")


def measure_on_device(cfg: RunConfig) -> ProgramMemory:
    """XLA's own accounting of the step on this process's default backend (module docstring)."""
    return _model(program_bytes(cfg, 1), program_bytes(cfg, 2), "device")
