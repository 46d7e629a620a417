"""Which cells train together and how much of a GPU each program takes: the stage's plan.

A stage (the search's waves, the finals) trains units of members: a cell's ``members_per_cell``
rates or seeds, which always stay together (a population is halved per cell on whole rungs).
Units of one shape (cells that compile to one program) may share a program. The plan, from the
program's memory (:mod:`tuner.service.plan.memory`), the card's memory and the cluster's GPUs:

1. Programs as large as fit: each shape's units are cut into the fewest programs that fit the
   budget (a whole card, or the share a file fixes), balanced in size.
2. At least as many programs as GPUs where the grid allows: while there are fewer programs than
   GPUs and a program holds several units, the largest program is cut further. Splitting a
   program keeps every member's trajectory (vmapped members are independent), so the plan
   changes speed, never results.
3. Spread before packing: Ray places fractional GPU requests first-fit (measured: four 0.25-GPU
   actors on a 4-GPU node all land on GPU 0; bench/README.md), so a fractional share would pile
   trials on one card while others idle. Each trial therefore takes a whole GPU unless there are
   at least two programs per GPU; then ``k = min(programs // gpus, programs per card by
   memory)`` programs share each card (share ``1/k``) and at most ``k x gpus`` run at once,
   so that first-fit fills every card to exactly ``k`` before any trial waits. A program
   that needs more than half a card always takes a whole one.

``resources.gpus_per_trial`` set to a number overrides step 3: every trial takes that share and
programs are cut to fit it. Pure: no Ray, no JAX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tuner.service.plan.memory import ProgramMemory

HEADROOM = 0.95  # of a card: JAX's pool (tuner.core.gpu_share.HEADROOM)
SAFETY = 0.9  # of the pool: fragmentation, cuDNN workspaces, the evaluation's own buffers


class ProgramTooLarge(ValueError):
    """One cell's members do not fit a card (or the file's share of one) in one program."""


@dataclasses.dataclass(frozen=True)
class Program:
    """Cells whose members train in one program, and what that program needs."""

    cells: tuple[str, ...]
    members: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"cells": list(self.cells), "members": self.members, "bytes": self.bytes}


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """A stage's programs and each trial's GPU share (0: CPU trials), with what decided them."""

    stage: str
    programs: tuple[Program, ...]
    gpu_share: float
    slots: int | None  # trials at once that keep placement spread (None: the file's rule)
    gpus: float
    card_bytes: int | None
    memory_source: str  # "device", "estimate" or "none" (CPU trials: no sizing)

    @property
    def groups(self) -> list[list[str]]:
        return [list(p.cells) for p in self.programs]

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "programs": [p.to_dict() for p in self.programs],
                "gpu_share": self.gpu_share, "slots": self.slots, "gpus": self.gpus,
                "card_bytes": self.card_bytes, "memory_source": self.memory_source}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> StagePlan:
        return StagePlan(str(d["stage"]),
                         tuple(Program(tuple(p["cells"]), int(p["members"]), int(p["bytes"]))
                               for p in d["programs"]),
                         float(d["gpu_share"]), d.get("slots"), float(d["gpus"]),
                         d.get("card_bytes"), str(d["memory_source"]))

    def summary(self) -> str:
        """One line: programs x members x GPU share."""
        sizes: dict[int, int] = {}
        for p in self.programs:
            sizes[p.members] = sizes.get(p.members, 0) + 1
        shape = ", ".join(f"{n} x {m} members" for m, n in sorted(sizes.items(), reverse=True))
        share = (f"{self.gpu_share:g} GPU each" if self.gpu_share else "CPU trials")
        peak = max(p.bytes for p in self.programs) / 2**30
        card = f" of a {self.card_bytes / 2**30:.0f} GiB card" if self.card_bytes else ""
        return (f"{self.stage}: {len(self.programs)} program(s) ({shape}), {share}, largest "
                f"{peak:.1f} GiB{card} ({self.memory_source} memory)")


def _chunks(cells: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """``cells`` cut into ``n`` contiguous pieces whose sizes differ by at most one."""
    q, r = divmod(len(cells), n)
    out, start = [], 0
    for i in range(n):
        size = q + (i < r)
        out.append(tuple(cells[start:start + size]))
        start += size
    return out


def plan_stage(stage: str, shapes: Sequence[Sequence[str]], members_per_cell: int,
               memory: Mapping[str, ProgramMemory], card_bytes: int | None, gpus: float,
               fixed_share: float | None = None) -> StagePlan:
    """The plan of one stage (module docstring).

    Args:
        stage: "search" or "finals" (for messages).
        shapes: Cells grouped by the program they compile to (each group may share one).
        members_per_cell: Rates of a cell in a wave, or its finals seeds.
        memory: Per shape (its first cell), the program's memory model.
        card_bytes: One card's memory; None with ``gpus == 0``.
        gpus: GPUs in the cluster (0: CPU trials, no sizing: one program per shape).
        fixed_share: The file's ``gpus_per_trial`` as an override (None: planned).
    """
    if gpus <= 0 or not card_bytes:
        programs = tuple(Program(tuple(g), len(g) * members_per_cell, 0) for g in shapes)
        return StagePlan(stage, programs, 0.0, None, 0.0, None, "none")
    n_gpus = max(1, math.floor(gpus + 1e-9))
    budget = card_bytes * HEADROOM * SAFETY * (fixed_share or 1.0)
    cut: list[int] = []
    for group in shapes:
        mem = memory[group[0]]
        per_program = mem.members_within(budget) // members_per_cell
        if per_program < 1:
            need = mem.bytes(members_per_cell)
            raise ProgramTooLarge(
                f"{stage}: cell {group[0]}'s {members_per_cell} members need "
                f"{need / 2**30:.1f} GiB in one program ({mem.per_member_bytes / 2**30:.2f} "
                f"GiB per member, {mem.source}), more than the {budget / 2**30:.1f} GiB a "
                f"program may use on this {card_bytes / 2**30:.0f} GiB card"
                + (f" at gpus_per_trial {fixed_share:g}" if fixed_share else "") + "; "
                + ("lower search.population" if stage == "search" else
                   "use fewer finals.seeds per run")
                + ", train.batch_size (or raise train.grad_accum) or the model's size, or use "
                  "a card with more memory")
        cut.append(math.ceil(len(group) / per_program))
    # at least as many programs as GPUs where the grid allows: cut the largest program again
    while sum(cut) < n_gpus:
        sizes = [math.ceil(len(g) / c) if c < len(g) else 0 for g, c in zip(shapes, cut,
                                                                            strict=True)]
        i = max(range(len(shapes)), key=lambda j: sizes[j])
        if sizes[i] <= 1:
            break
        cut[i] += 1
    programs = tuple(Program(cells, len(cells) * members_per_cell,
                             memory[group[0]].bytes(len(cells) * members_per_cell))
                     for group, c in zip(shapes, cut, strict=True)
                     for cells in _chunks(list(group), c))
    if fixed_share is not None:
        return StagePlan(stage, programs, fixed_share, None, gpus, card_bytes,
                         memory[shapes[0][0]].source)
    largest = max(p.bytes for p in programs) / (card_bytes * HEADROOM)  # of a pool
    # programs per card whose pools (each share x HEADROOM of it) hold them with SAFETY spare
    by_memory = max(1, math.floor(SAFETY / largest)) if largest > 0 else len(programs)
    if largest > 0.5:
        by_memory = 1
    k = max(1, min(by_memory, len(programs) // n_gpus))
    return StagePlan(stage, programs, 1.0 / k, k * n_gpus, gpus, card_bytes,
                     memory[shapes[0][0]].source)
