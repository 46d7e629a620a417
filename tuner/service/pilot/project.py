"""An experiment's wall time projected from a pilot's measurements (pure: no Ray, no JAX).

The model of a run, stage by stage, with ``slots`` trials running at once:

- Search: a cell's ``trials_per_cell`` trials each train the ASHA-expected number of steps
  (:func:`asha_expected_steps`) at the measured step time, plus an evaluation and a checkpoint
  every ``eval_every`` steps; every trial pays the warm start-up (model and task built, jit
  cache hit) and every worker its first compile of each shape it runs. The stage takes the
  total work spread over the slots, but no less than the longest cell's trials at its own
  concurrency (``per_cell``: TPE asks only a few of a cell's trials at once).
- Population search (``search.population`` > 1): per wave, one trial per cell (or per group
  of cells that share a program), its members halved at the rungs
  (:func:`tuner.service.search.halving.member_steps`, segment by segment); a program of n
  members steps in a time interpolated linearly between the measured one-member step and the
  measured full population's step. A wave starts when the one before it has ended, so the
  stage is the sum of the waves, each its work over the slots but no less than its longest
  population.
- Finals: one trial per cell, all seeds vmapped, to the full budget, plus each seed's
  evaluation after training (the rollouts), spread over the slots the same way.
- A constant: Ray start, Tune's start and end, the report (measured by the pilot as its own
  wall time beyond its slowest trial).

Step times are measured with as many trials running side by side as the cluster packs, so
fractional-GPU contention is in them; more GPUs add slots, not speed per trial.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

TRIAL_DRAWS = 200_000  # Monte-Carlo trials per expectation (seeded: the same every call)


@dataclasses.dataclass(frozen=True)
class ShapeCost:
    """What the pilot measured for one compiled shape (seconds, bytes)."""

    step_s: float  # one search optimizer step, steady state, under the cluster's packing
    compile_s: float  # a worker's first chunk beyond its steady time: compile or cache load
    warm_start_s: float  # a later trial in the same worker: build + init + jit cache hit
    eval_s: float  # one evaluation
    checkpoint_s: float  # one checkpoint save (search state)
    finals_step_s: float  # one step of the finals' vmapped seeds
    finals_compile_s: float
    finals_checkpoint_s: float
    after_training_s: float  # one seed's evaluation after training (the LDS rollouts)
    peak_bytes: int  # device memory (GPU) or resident memory (CPU) of one trial
    # a population of ``population_size`` members in one program (0: not measured)
    population_size: int = 0
    population_step_s: float = 0.0  # one step of the whole population
    population_compile_s: float = 0.0
    population_compacts: bool = True  # stopped members leave the program (else masked)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ShapeCost:
        return ShapeCost(**{f.name: d[f.name] for f in dataclasses.fields(ShapeCost)
                            if f.name in d})

    def members_step_s(self, n: int) -> float:
        """One step of a program of ``n`` members (module docstring)."""
        if n <= 1:
            return self.step_s
        if self.population_size <= 1:  # not measured: no gain from one program assumed
            return n * self.step_s
        slope = (self.population_step_s - self.step_s) / (self.population_size - 1)
        return self.step_s + slope * (n - 1)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The experiment as the projection sees it."""

    cells: Mapping[str, str]  # cell -> shape name
    trials_per_cell: int
    max_t: int  # full budget (steps)
    eval_every: int
    grace_period: int
    reduction_factor: float
    n_seeds: int
    per_cell: int | None  # a cell's trials at once (None: no cap beyond the slots)
    population: int = 1  # members of a cell per wave (1: one trial per rate, ASHA)
    groups: Sequence[Sequence[str]] = ()  # cells trained in one program (population search)
    finals_groups: Sequence[Sequence[str]] = ()  # cells whose seeds share a finals program


def asha_expected_steps(n_trials: int, grace_period: float, max_t: float,
                        reduction_factor: float) -> float:
    """Mean steps per trial of a cell's ``n_trials`` under the per-cell ASHA rule
    (:class:`tuner.service.search.scheduler.CellRungs`: a result below the
    ``(1 - 1/rf)`` percentile of its rung's earlier results stops the trial).

    Assumes trials arrive one after another with a quality that keeps its rank at every rung
    (i.i.d. uniform): the usual ASHA picture. Early trials meet empty rungs and always go on,
    so small cells train more than the asymptotic ``sum(rf**-k)`` fraction.
    """
    milestones = []
    m = float(grace_period)
    while m <= max_t * (1 + 1e-9):
        milestones.append(m)
        m *= reduction_factor
    if not milestones or milestones[-1] < max_t:
        milestones.append(float(max_t))
    rng = random.Random(0)
    simulations = max(100, TRIAL_DRAWS // n_trials)
    total = 0.0
    for _ in range(simulations):
        rungs: list[list[float]] = [[] for _ in milestones]  # kept sorted
        for _ in range(n_trials):
            q = rng.random()
            stop = milestones[-1]
            for k, milestone in enumerate(milestones[:-1]):
                recorded = rungs[k]
                cutoff = percentile(recorded, 1 - 1 / reduction_factor) if recorded else None
                bisect.insort(recorded, q)
                if cutoff is not None and q < cutoff:
                    stop = milestone
                    break
            total += stop
    return total / (simulations * n_trials)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """``np.percentile``'s default (linear) rule on an already sorted list, in O(1)."""
    at = fraction * (len(sorted_values) - 1)
    lo = math.floor(at)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (at - lo)


def slots_for(gpus: float, cpus: float, gpus_per_trial: float, cpus_per_trial: float,
              max_concurrent: int | None) -> int:
    """Trials running at once on a cluster of ``gpus``/``cpus`` (the ``auto`` rule of
    :mod:`tuner.service.concurrency`, capped by a fixed ``max_concurrent``)."""
    fit = (gpus / gpus_per_trial) if gpus_per_trial > 0 else (cpus / cpus_per_trial)
    slots = max(1, math.floor(fit + 1e-9))
    return min(slots, max_concurrent) if max_concurrent else slots


def population_search_s(plan: Plan, costs: Mapping[str, ShapeCost], slots: int
                        ) -> tuple[float, float]:
    """(seconds of the population search, mean steps per member) (module docstring)."""
    from tuner.service.search.halving import keep_count, rungs

    total, member_steps, members = 0.0, 0, 0
    for wave_start in range(0, plan.trials_per_cell, plan.population):
        k = min(plan.population, plan.trials_per_cell - wave_start)
        pops = []
        for group in plan.groups or [[c] for c in plan.cells]:
            c = costs[plan.cells[group[0]]]
            seconds, alive, start = c.warm_start_s + c.population_compile_s, k, 0
            for end in [*rungs(plan.grace_period, plan.reduction_factor, plan.max_t),
                        plan.max_t]:
                n = alive * len(group)
                program = n if c.population_compacts else k * len(group)
                seconds += (end - start) * c.members_step_s(program) + (end - start) / \
                    plan.eval_every * (n * c.eval_s + program * c.checkpoint_s)
                member_steps += (end - start) * n
                alive, start = keep_count(alive, plan.reduction_factor), end
            members += k * len(group)
            pops.append(seconds)
        total += max(sum(pops) / slots, max(pops))
    return total, member_steps / max(1, members)


def project(plan: Plan, costs: Mapping[str, ShapeCost], slots: int, overhead_s: float
            ) -> dict[str, float]:
    """Seconds per stage and in total (module docstring)."""
    if plan.population > 1:
        search, steps = population_search_s(plan, costs, slots)
        return {"search_s": search, **_finals(plan, costs, slots, search, overhead_s),
                "asha_steps_per_trial": steps}
    steps = asha_expected_steps(plan.trials_per_cell, plan.grace_period, plan.max_t,
                                plan.reduction_factor)
    cell_s, work = {}, 0.0
    for cell, shape in plan.cells.items():
        c = costs[shape]
        trial = steps * c.step_s + steps / plan.eval_every * (c.eval_s + c.checkpoint_s)
        cell_s[cell] = plan.trials_per_cell * (trial + c.warm_start_s)
        work += cell_s[cell]
    shapes = _count(plan.cells.values())
    work += sum(min(slots, n * plan.trials_per_cell) * costs[s].compile_s
                for s, n in shapes.items())
    per_cell = min(slots, plan.per_cell or slots)
    search = max(work / slots, max(cell_s.values()) / per_cell)
    return {"search_s": search, **_finals(plan, costs, slots, search, overhead_s),
            "asha_steps_per_trial": steps}


def _finals(plan: Plan, costs: Mapping[str, ShapeCost], slots: int, search: float,
            overhead_s: float) -> dict[str, float]:
    finals = []
    evals = plan.max_t / plan.eval_every
    for group in plan.finals_groups:  # shared programs: a step of n members interpolated
        c = costs[plan.cells[group[0]]]
        n = len(group) * plan.n_seeds
        step = c.finals_step_s if len(group) == 1 else c.members_step_s(n)
        finals.append(plan.max_t * step + c.finals_compile_s
                      + evals * (n * c.eval_s + c.finals_checkpoint_s) + n * c.after_training_s)
    for shape in ([] if plan.finals_groups else plan.cells.values()):  # one cell a program
        c = costs[shape]
        finals.append(plan.max_t * c.finals_step_s + c.finals_compile_s
                      + evals * (plan.n_seeds * c.eval_s + c.finals_checkpoint_s)
                      + plan.n_seeds * c.after_training_s)
    finals_s = max(sum(finals) / slots, max(finals))
    return {"finals_s": finals_s, "overhead_s": overhead_s,
            "total_s": search + finals_s + overhead_s}


def gpus_per_trial_allowed(peak_bytes: Sequence[int], device_bytes: int,
                           headroom: float = 0.8) -> float:
    """The smallest GPU share (1/k) whose memory holds the largest trial: ``k`` trials of
    ``max(peak_bytes)`` fit in ``headroom`` of the device (CUDA contexts, fragmentation)."""
    k = max(1, math.floor(headroom * device_bytes / max(peak_bytes)))
    return 1.0 / k


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
