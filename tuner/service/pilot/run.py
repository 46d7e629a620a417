"""``python -m tuner.run exp4 --pilot``: measure every distinct compiled shape of an experiment
on the cluster it is given, and project the experiment's wall time (now and on N GPUs).

Cells that compile to the same program (same model, step and task arrays' shapes: e.g. the
LDS's eigenvalue and structure axes) are one shape; each shape is measured by
``tuner.service.pilot.measure`` in as many side-by-side trials as the cluster packs (so a
fractional GPU's contention is measured, not guessed), all as one Tune run under the experiment
folder (``pilot/``). The figures and the projection go to ``pilot.json``; the real run reads it
back and prints each stage's time against it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from tuner.service.concurrency import per_cell_cap
from tuner.service.dirs import ExperimentDirs
from tuner.service.experiment import Experiment
from tuner.service.files import write_json
from tuner.service.pilot import project
from tuner.service.pilot.measure import pilot_trial
from tuner.service.plan.memory import ProgramMemory
from tuner.service.plan.programs import ProgramTooLarge, StagePlan, plan_stage
from tuner.service.shapes import shapes
from tuner.service.snapshot_copy import SnapshotCopy
from tuner.service.stages import trainable, worker
from tuner.service.trial_spec import TrialSpec, pilot_spec

GPU_COUNTS = (1, 8, 32)  # the projection's "on N GPUs" rows
PILOT_PACK = 4  # pilot trials side by side on one GPU at most (their step times carry it)


def stage_plans(exp: Experiment, by_shape: dict[str, list[str]],
                memory: dict[str, ProgramMemory], card: int | None, gpus: float
                ) -> tuple[StagePlan, StagePlan]:
    """The search's and the finals' plans on ``gpus`` cards of ``card`` bytes (what the real
    run would make from the pilot's memory models: :mod:`tuner.service.plan.stage`)."""
    groups = (list(by_shape.values()) if exp.search.share_program
              else [[c] for c in exp.cells()])
    shape_of = {c: name for name, cells in by_shape.items() for c in cells}
    mem = {g[0]: memory[shape_of[g[0]]] for g in groups}
    share = None if exp.resources.planned else exp.resources.gpus_per_trial
    n_gpus = gpus if exp.resources.gpus_per_trial > 0 and card else 0.0
    s = exp.search
    return (plan_stage("search", groups, s.population if s.population > 1 else 1, mem, card,
                       n_gpus, share),
            plan_stage("finals", groups, len(exp.finals.seeds), mem, card, n_gpus, share))


def _plan(exp: Experiment, by_shape: dict[str, list[str]], search: StagePlan | None = None,
          finals: StagePlan | None = None) -> project.Plan:
    s = exp.search
    groups = (search.groups if search else
              list(by_shape.values()) if s.share_program else [[c] for c in exp.cells()])
    return project.Plan(
        cells={c: shape for shape, cells in by_shape.items() for c in cells},
        trials_per_cell=s.trials_per_cell, max_t=exp.max_t, eval_every=exp.base.train.eval_every,
        grace_period=exp.asha.grace_period, reduction_factor=exp.asha.reduction_factor,
        n_seeds=len(exp.finals.seeds),
        per_cell=per_cell_cap(s.trials_per_cell) if s.auto_concurrency else None,
        population=s.population, groups=groups,
        finals_groups=finals.groups if finals else ())


def _slots(exp: Experiment, gpus: float, cpus: float) -> int:
    r = exp.resources
    return project.slots_for(gpus, cpus, r.gpus_per_trial, r.cpus_per_trial,
                             exp.search.max_concurrent)


def _pilot_share(exp: Experiment, gpus: float, n_shapes: int) -> float:
    """A pilot trial's GPU share: a whole card for one shape, else up to :data:`PILOT_PACK`
    shapes side by side on a card (spread first: one per GPU while GPUs remain)."""
    if exp.resources.gpus_per_trial <= 0 or gpus <= 0:
        return exp.resources.gpus_per_trial
    if not exp.resources.planned:
        return exp.resources.gpus_per_trial
    per_gpu = min(PILOT_PACK, max(1, math.ceil(n_shapes / math.floor(gpus))))
    return 1.0 / per_gpu


def run_pilot(exp: Experiment, dirs: ExperimentDirs, startup_s: float = 0.0) -> dict[str, Any]:
    """Measures, projects, writes ``pilot.json`` and returns what it wrote; ``startup_s``: the
    driver's time from its start to here (imports, Ray), part of every run's overhead."""
    # the driver only groups cells: building their tasks on the GPU backend would give this
    # process JAX's default 75% of the GPU, and the trials could not start cuBLAS (H200)
    jax.config.update("jax_platforms", "cpu")
    by_shape = shapes(exp)
    have = ray.cluster_resources()
    gpus, cpus = have.get("GPU", 0.0), have.get("CPU", 0.0)
    share = _pilot_share(exp, gpus, len(by_shape))
    slots = project.slots_for(gpus, cpus, share, exp.resources.cpus_per_trial,
                              exp.search.max_concurrent)
    copies = max(1, slots // len(by_shape))
    s = exp.search
    lr = math.sqrt(s.lr_low * s.lr_high)
    # a population trial's program: the cell's rates, and the cells sharing it where they do
    size = s.population * (max(map(len, by_shape.values())) if s.share_program else 1)
    specs = [pilot_spec(shape, i, lr, exp.finals.seeds, exp.cells()[shape],
                        size if s.population > 1 else 1, (s.lr_low, s.lr_high),
                        worker(exp, dirs, share))
             for shape in by_shape for i in range(copies)]
    print(f"pilot: {len(by_shape)} shape(s) x {copies} side-by-side trial(s) on "
          f"{gpus:g} GPU(s) / {cpus:g} CPU(s) ({slots} slots)", flush=True)
    tuner = tune.Tuner(
        trainable(exp, pilot_trial, share), param_space={"pilot": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=False),
        run_config=tune.RunConfig(storage_path=str(dirs.root), name="pilot", verbose=0,
                                  # whole snapshot copies: the resume checks every run
                                  # folder's snapshot (folder_check)
                                  callbacks=[JsonLoggerCallback(), SnapshotCopy()]))
    t = time.perf_counter()
    results = tuner.fit()
    tune_s = time.perf_counter() - t
    errors = [str(r.error) for r in results if r.error]
    if errors:
        raise RuntimeError(f"pilot trials failed: {errors[0]}")
    measured: dict[str, list[dict[str, float]]] = {}
    trial_s = []
    for r in results:
        measured.setdefault(TrialSpec.of(r.config).cells[0], []).append(r.metrics)
        trial_s.append(r.metrics["time_total_s"])
    costs = {shape: _median_cost(rows) for shape, rows in measured.items()}
    # beyond the trials: the driver's start, Tune's start and teardown (the trials ran in
    # waves of ``slots``)
    waves = math.ceil(len(trial_s) / slots)
    overhead = startup_s + max(0.0, tune_s - waves * sum(trial_s) / len(trial_s))
    device = max((row.get("device_bytes") or 0) for rows in measured.values() for row in rows)
    memory = {shape: ProgramMemory.from_dict(rows[0]["memory"])
              for shape, rows in measured.items()}
    card = device or (int(exp.resources.gpu_memory_gib * 2**30)
                      if exp.resources.gpu_memory_gib else None)

    def projected(n_gpus: float) -> dict[str, Any]:
        try:
            search, finals = stage_plans(exp, by_shape, memory, card, n_gpus)
        except ProgramTooLarge as e:  # a finding of the pilot, not its failure
            return {"search_s": math.nan, "finals_s": math.nan, "overhead_s": overhead,
                    "total_s": math.nan, "asha_steps_per_trial": math.nan, "error": str(e),
                    "plan": {"search": {"programs": [], "gpu_share": 0.0},
                             "finals": {"programs": [], "gpu_share": 0.0},
                             "search_summary": f"none: {e}", "finals_summary": "none"}}
        # trials sharing a card share its throughput (no gain from packing assumed): the
        # cards, not the trials, are the slots
        n = max(1, math.floor(n_gpus)) if search.gpu_share else _slots(exp, 0.0, cpus)
        return {**project.project(_plan(exp, by_shape, search, finals), costs, n, overhead),
                "plan": {"search": search.to_dict(), "finals": finals.to_dict(),
                         "search_summary": search.summary(),
                         "finals_summary": finals.summary()}}

    out = {
        "experiment": exp.name, "cluster": {"gpus": gpus, "cpus": cpus, "slots": slots},
        "card_bytes": card,
        "shapes": {s: {"cells": by_shape[s], "cost": costs[s].__dict__,
                       "memory": memory[s].to_dict(), "copies": measured[s]} for s in by_shape},
        "overhead_s": overhead,
        "projection": {"current": projected(gpus),
                       "gpus": {str(n): projected(n) for n in GPU_COUNTS
                                if exp.resources.gpus_per_trial > 0 and card}},
        "gpus_per_trial_allowed": (project.gpus_per_trial_allowed(
            [c.peak_bytes for c in costs.values()], device) if device else None),
    }
    _write(dirs.pilot, out)
    return out


def _median_cost(rows: list[dict[str, Any]]) -> project.ShapeCost:
    fields = [f for f in project.ShapeCost.__dataclass_fields__ if f in rows[0]]  # a one-rate
    # search measures no population
    return project.ShapeCost.from_dict(
        {f: sorted(r[f] for r in rows)[len(rows) // 2] for f in fields})


def _write(path, data) -> None:
    write_json(path, data)


def summary_lines(pilot: dict[str, Any], exp: Experiment) -> list[str]:
    """The pilot's figures and projection as printed lines."""
    lines = [f"{'shape':<28} {'cells':>5} {'step ms':>8} {'compile s':>9} {'eval s':>7} "
             f"{'ckpt s':>7} {'finals step ms':>14} {'rollout s':>9} {'peak MiB':>9} "
             f"{'MiB/member':>10} {'pop':>7} {'pop step ms':>11}"]
    for name, s in pilot["shapes"].items():
        c, mem = s["cost"], s.get("memory") or {}
        row = s["copies"][0]
        pop = (f"{c.get('population_size', 0)}/{row.get('population_wanted', 0)}"
               if row.get("population_wanted", 0) > 1 else "-")
        lines.append(f"{name:<28} {len(s['cells']):>5} {1e3 * c['step_s']:>8.3f} "
                     f"{c['compile_s']:>9.1f} {c['eval_s']:>7.3f} {c['checkpoint_s']:>7.3f} "
                     f"{1e3 * c['finals_step_s']:>14.3f} {c['after_training_s']:>9.1f} "
                     f"{c['peak_bytes'] / 2**20:>9.0f} "
                     f"{mem.get('per_member_bytes', 0) / 2**20:>10.0f} {pop:>7} "
                     f"{1e3 * c.get('population_step_s', 0):>11.3f}")
        if row.get("population_fits", 1 << 30) < row.get("population_wanted", 0):
            lines.append(f"  {name}: a program of {row['population_wanted']} members does not "
                         f"fit this trial's pool; the largest that does: "
                         f"{row['population_fits']} (the plan cuts programs to fit)")
    cur = pilot["projection"]["current"]
    lines.append(f"projected wall time here ({pilot['cluster']['slots']} slots): "
                 f"{_fmt(cur['total_s'])} (search {_fmt(cur['search_s'])}, finals "
                 f"{_fmt(cur['finals_s'])}, start-up and report {_fmt(cur['overhead_s'])}; "
                 f"ASHA trains {cur['asha_steps_per_trial']:.0f} of {exp.max_t} steps per "
                 "trial on average)")
    for stage in ("search", "finals"):
        lines.append(f"plan here: {cur['plan'][stage + '_summary']}")
    for n, p in pilot["projection"]["gpus"].items():
        lines.append(f"  on {n} GPU(s): {_fmt(p['total_s'])} (search {_fmt(p['search_s'])}, "
                     f"finals {_fmt(p['finals_s'])}; {int(n) * p['total_s'] / 3600:.2f} "
                     f"GPU-hours; plan: {len(p['plan']['search']['programs'])} search and "
                     f"{len(p['plan']['finals']['programs'])} finals program(s) at "
                     f"{p['plan']['search']['gpu_share']:g} / "
                     f"{p['plan']['finals']['gpu_share']:g} GPU)")
    if exp.search.max_concurrent and pilot["projection"]["gpus"]:
        lines.append(f"  (search.max_concurrent={exp.search.max_concurrent} caps the slots; "
                     "`max_concurrent: auto` fills the cluster)")
    if pilot["gpus_per_trial_allowed"]:
        lines.append(f"memory allows gpus_per_trial: {pilot['gpus_per_trial_allowed']:g} "
                     f"(the file has {exp.resources.gpus_per_trial:g})")
    return lines


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 3600:.2f} h"
