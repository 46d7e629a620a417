"""The two stages of an experiment, each one Ray Tune run that resumes where it stopped.

Stage 1 (search): one Tuner for the whole grid; :class:`PerCellSearcher` keeps an Optuna study
per cell and :class:`PerCellScheduler` an ASHA per cell. Stage 2 (finals): the best learning
rate of every cell retrained with each of the experiment's seeds at the full budget, ending in
the rollout evaluation. A stage writes its result file only when all of its trials have ended;
that file is the marker that the stage is done and is never rerun.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray import tune

from tuner.cell_scheduler import PerCellScheduler
from tuner.cell_search import PerCellSearcher
from tuner.experiment_dirs import ExperimentDirs
from tuner.search_space import Experiment
from tuner.status import StatusFile
from tuner.trainable import train_trial
from tuner.wandb_logging import make_callback

TIME_ATTR = "step"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _trainable(exp: Experiment):
    trainable = tune.with_parameters(train_trial, base=exp.base)
    return tune.with_resources(trainable, {"cpu": exp.cpus_per_trial, "gpu": exp.gpus_per_trial})


def _run_config(exp: Experiment, dirs: ExperimentDirs, name: str, status: StatusFile,
                wandb: bool) -> tune.RunConfig:
    callbacks = [status]
    if wandb:
        callbacks.append(make_callback(exp.wandb_project, exp.name, dirs.wandb))
    return tune.RunConfig(
        storage_path=str(dirs.root), name=name, callbacks=callbacks, verbose=1,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        # a lost worker node (e.g. a preempted Slurm job) retries from the last checkpoint
        failure_config=tune.FailureConfig(max_failures=3),
    )


def build_search(exp: Experiment, dirs: ExperimentDirs) -> tuple[PerCellSearcher,
                                                                    PerCellScheduler]:
    """The searcher/scheduler pair; the searcher saves the scheduler's rungs in its snapshots."""
    scheduler = PerCellScheduler(metric=exp.metric, mode=exp.mode, time_attr=TIME_ATTR,
                                 max_t=exp.max_t, grace_period=exp.grace_period,
                                 reduction_factor=exp.reduction_factor)
    cells = {cell: {"stage": "search", "overrides": over, "jax_cache_dir": str(dirs.jax_cache)}
             for cell, over in exp.cells().items()}
    searcher = PerCellSearcher(cells, exp.trials_per_cell, exp.lr_low, exp.lr_high,
                               metric=exp.metric, mode=exp.mode, time_attr=TIME_ATTR,
                               max_t=exp.max_t, study_dir=dirs.studies, seed=0,
                               scheduler=scheduler)
    return searcher, scheduler


def run_search(exp: Experiment, dirs: ExperimentDirs, wandb: bool = True) -> dict[str, Any]:
    """Stage 1. Returns cell -> best {lr, value, trial_number, at_edge} (COMPLETE trials only)."""
    if dirs.best.exists():
        return json.loads(dirs.best.read_text())
    path = dirs.root / "search"
    status = StatusFile(dirs.status, "search", list(exp.cells()), exp.trials_per_cell,
                        exp.metric, exp.mode)
    if tune.Tuner.can_restore(path):
        print(f"resuming the search from {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), _trainable(exp), resume_errored=False,
                                   restart_errored=False)
    else:
        searcher, scheduler = build_search(exp, dirs)
        tuner = tune.Tuner(
            _trainable(exp),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=-1, max_concurrent_trials=exp.max_concurrent,
                                        reuse_actors=True),
            run_config=_run_config(exp, dirs, "search", status, wandb))
    tuner.fit()
    searcher, _ = build_search(exp, dirs)
    searcher.restore_from_dir(str(path))
    best = searcher.best_per_cell()
    missing = [c for c, b in best.items() if b is None]
    if missing:
        raise RuntimeError(f"no trial ran the full budget in cell(s) {missing}: every trial "
                           "diverged or failed; lower search.lr_high or check the trial logs "
                           f"under {path}")
    searcher.trials_dataframe().to_csv(dirs.root / "search_trials.csv", index=False)
    _write_json(dirs.best, best)
    return best


def final_specs(exp: Experiment, best: dict[str, Any], dirs: ExperimentDirs) -> list[dict]:
    """One trial spec per (cell, seed), at the cell's best learning rate."""
    cells = exp.cells()
    return [{"stage": "final", "cell": cell, "lr": best[cell]["lr"], "seed": seed,
             "overrides": cells[cell], "jax_cache_dir": str(dirs.jax_cache)}
            for cell in cells for seed in exp.seeds]


def _final_trial(config: dict[str, Any], base) -> None:
    train_trial(config["final"], base)


def run_finals(exp: Experiment, dirs: ExperimentDirs, best: dict[str, Any],
               wandb: bool = True) -> list[dict]:
    """Stage 2. Returns one row per final run: cell, seed, lr and its final metrics."""
    if dirs.finals.exists():
        return json.loads(dirs.finals.read_text())
    path = dirs.root / "finals"
    trainable = tune.with_resources(tune.with_parameters(_final_trial, base=exp.base),
                                    {"cpu": exp.cpus_per_trial, "gpu": exp.gpus_per_trial})
    if tune.Tuner.can_restore(path):
        print(f"resuming the finals from {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
    else:
        status = StatusFile(dirs.status, "finals", list(exp.cells()), len(exp.seeds),
                            exp.metric, exp.mode)
        tuner = tune.Tuner(
            trainable,
            param_space={"final": tune.grid_search(final_specs(exp, best, dirs))},
            tune_config=tune.TuneConfig(max_concurrent_trials=exp.max_concurrent,
                                        reuse_actors=True),
            run_config=_run_config(exp, dirs, "finals", status, wandb))
    results = tuner.fit()
    rows = []
    for r in results:
        spec = r.config["final"]
        metrics = {k: v for k, v in (r.metrics or {}).items()
                   if k.startswith("eval/") or k in ("train_loss", "step", "diverged")}
        rows.append({"cell": spec["cell"], "seed": spec["seed"], "lr": spec["lr"],
                     **{k: v for k, v in spec["overrides"].items()}, **metrics,
                     "error": None if r.error is None else str(r.error)})
    unfinished = [(x["cell"], x["seed"]) for x in rows
                  if x["error"] or not (x.get("diverged") or x.get("step") == exp.max_t)]
    if unfinished:
        raise RuntimeError(f"final runs did not finish: {unfinished}; rerun the same command "
                           "to resume them")
    _write_json(dirs.finals, rows)
    return rows
