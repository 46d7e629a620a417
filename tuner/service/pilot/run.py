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
from tuner.service.shapes import shapes
from tuner.service.stages import trainable, worker
from tuner.service.trial_spec import TrialSpec, pilot_spec

GPU_COUNTS = (1, 2, 4, 8)  # the projection's "on N GPUs" rows


def _plan(exp: Experiment, by_shape: dict[str, list[str]]) -> project.Plan:
    s = exp.search
    return project.Plan(
        cells={c: shape for shape, cells in by_shape.items() for c in cells},
        trials_per_cell=s.trials_per_cell, max_t=exp.max_t, eval_every=exp.base.train.eval_every,
        grace_period=exp.asha.grace_period, reduction_factor=exp.asha.reduction_factor,
        n_seeds=len(exp.finals.seeds),
        per_cell=per_cell_cap(s.trials_per_cell) if s.auto_concurrency else None,
        population=s.population,
        groups=list(by_shape.values()) if s.share_program else [[c] for c in exp.cells()])


def _slots(exp: Experiment, gpus: float, cpus: float) -> int:
    r = exp.resources
    return project.slots_for(gpus, cpus, r.gpus_per_trial, r.cpus_per_trial,
                             exp.search.max_concurrent)


def run_pilot(exp: Experiment, dirs: ExperimentDirs, startup_s: float = 0.0) -> dict[str, Any]:
    """Measures, projects, writes ``pilot.json`` and returns what it wrote; ``startup_s``: the
    driver's time from its start to here (imports, Ray), part of every run's overhead."""
    # the driver only groups cells: building their tasks on the GPU backend would give this
    # process JAX's default 75% of the GPU, and the trials could not start cuBLAS (H200)
    jax.config.update("jax_platforms", "cpu")
    by_shape = shapes(exp)
    have = ray.cluster_resources()
    gpus, cpus = have.get("GPU", 0.0), have.get("CPU", 0.0)
    slots = _slots(exp, gpus, cpus)
    copies = max(1, slots // len(by_shape))
    s = exp.search
    lr = math.sqrt(s.lr_low * s.lr_high)
    # a population trial's program: the cell's rates, and the cells sharing it where they do
    size = s.population * (max(map(len, by_shape.values())) if s.share_program else 1)
    specs = [pilot_spec(shape, i, lr, exp.finals.seeds, exp.cells()[shape],
                        size if s.population > 1 else 1, (s.lr_low, s.lr_high), worker(exp, dirs))
             for shape in by_shape for i in range(copies)]
    print(f"pilot: {len(by_shape)} shape(s) x {copies} side-by-side trial(s) on "
          f"{gpus:g} GPU(s) / {cpus:g} CPU(s) ({slots} slots)", flush=True)
    tuner = tune.Tuner(
        trainable(exp, pilot_trial), param_space={"pilot": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=False),
        run_config=tune.RunConfig(storage_path=str(dirs.root), name="pilot", verbose=0,
                                  callbacks=[JsonLoggerCallback()]))
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
    plan = _plan(exp, by_shape)
    device = max((row.get("device_bytes") or 0) for rows in measured.values() for row in rows)
    out = {
        "experiment": exp.name, "cluster": {"gpus": gpus, "cpus": cpus, "slots": slots},
        "shapes": {s: {"cells": by_shape[s], "cost": costs[s].__dict__,
                       "copies": measured[s]} for s in by_shape},
        "overhead_s": overhead,
        "projection": {"current": project.project(plan, costs, slots, overhead),
                       "gpus": {str(n): project.project(plan, costs, _slots(exp, n, cpus),
                                                        overhead)
                                for n in GPU_COUNTS if exp.resources.gpus_per_trial > 0}},
        "gpus_per_trial_allowed": (project.gpus_per_trial_allowed(
            [c.peak_bytes for c in costs.values()], device) if device else None),
    }
    _write(dirs.pilot, out)
    return out


def _median_cost(rows: list[dict[str, float]]) -> project.ShapeCost:
    fields = [f for f in project.ShapeCost.__dataclass_fields__ if f in rows[0]]  # a one-rate
    # search measures no population
    return project.ShapeCost.from_dict(
        {f: sorted(r[f] for r in rows)[len(rows) // 2] for f in fields})


def _write(path, data) -> None:
    write_json(path, data)


def summary_lines(pilot: dict[str, Any], exp: Experiment) -> list[str]:
    """The pilot's figures and projection as printed lines."""
    lines = [f"{'shape':<28} {'cells':>5} {'step ms':>8} {'compile s':>9} {'eval s':>7} "
             f"{'ckpt s':>7} {'finals step ms':>14} {'rollout s':>9} {'peak MiB':>9}"]
    for name, s in pilot["shapes"].items():
        c = s["cost"]
        lines.append(f"{name:<28} {len(s['cells']):>5} {1e3 * c['step_s']:>8.3f} "
                     f"{c['compile_s']:>9.1f} {c['eval_s']:>7.3f} {c['checkpoint_s']:>7.3f} "
                     f"{1e3 * c['finals_step_s']:>14.3f} {c['after_training_s']:>9.1f} "
                     f"{c['peak_bytes'] / 2**20:>9.0f}")
    cur = pilot["projection"]["current"]
    lines.append(f"projected wall time here ({pilot['cluster']['slots']} slots): "
                 f"{_fmt(cur['total_s'])} (search {_fmt(cur['search_s'])}, finals "
                 f"{_fmt(cur['finals_s'])}, start-up and report {_fmt(cur['overhead_s'])}; "
                 f"ASHA trains {cur['asha_steps_per_trial']:.0f} of {exp.max_t} steps per "
                 "trial on average)")
    for n, p in pilot["projection"]["gpus"].items():
        lines.append(f"  on {n} GPU(s): {_fmt(p['total_s'])}")
    if exp.search.max_concurrent and pilot["projection"]["gpus"]:
        lines.append(f"  (search.max_concurrent={exp.search.max_concurrent} caps the slots; "
                     "`max_concurrent: auto` fills the cluster)")
    if pilot["gpus_per_trial_allowed"]:
        lines.append(f"memory allows gpus_per_trial: {pilot['gpus_per_trial_allowed']:g} "
                     f"(the file has {exp.resources.gpus_per_trial:g})")
    return lines


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 3600:.2f} h"
