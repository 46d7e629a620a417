"""Runs (or resumes) one per-cell search on a synthetic trainable; used by the kill/resume test.

Usage::

    python tests/search_driver.py --storage DIR --name NAME --study-dir DIR \
        --cells '{"a": {"opt": -3.0, "scale": 1.0}}' --summary OUT.json

Starts a fresh ``Tuner`` or, when ``Tuner.can_restore`` says the experiment directory holds a
snapshot, ``Tuner.restore``s it. Ray 2.60's ``Tuner.restore`` takes no ``tune_config``: the
searcher and scheduler come back from ``tuner.pkl`` as freshly constructed objects (the
searcher pickles without its journals and re-opens them) and Tune restores their state from
the newest snapshot. After the run, a fresh searcher/scheduler pair is restored from the final
snapshot and a JSON summary is written for the test to check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METRIC = "loss"
MODE = "min"
TIME_ATTR = "step"


def synthetic_trainable(config: dict[str, Any]) -> None:
    """Loss ``scale * ((log10 lr - opt)^2 + 1/(1+t)) + noise`` for t in 1..max_t.

    Checkpoints every step so a restored trial continues where it stopped. ``lr`` above
    ``nan_above`` reports NaN (a diverging run).
    """
    from ray import tune

    start = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads(Path(d, "state.json").read_text())["step"] + 1
    lr, scale = config["lr"], config.get("scale", 1.0)
    nan_above = config.get("nan_above")
    for step in range(start, config["max_t"] + 1):
        time.sleep(config.get("sleep", 0.0))
        noise = random.Random(f"{lr}:{step}").gauss(0.0, 0.01)
        loss = scale * ((math.log10(lr) - config["opt"]) ** 2 + 1.0 / (1 + step)) + noise
        if nan_above is not None and lr > nan_above:
            loss = float("nan")
        with tempfile.TemporaryDirectory() as d:
            Path(d, "state.json").write_text(json.dumps({"step": step}))
            tune.report(
                {METRIC: loss, TIME_ATTR: step},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def tune_config(searcher, scheduler):
    """Two trials at a time through the per-cell searcher and scheduler, workers reused."""
    from ray import tune

    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                           max_concurrent_trials=2, reuse_actors=True)


def build_search(
    cells: dict[str, dict],
    trials_per_cell: int,
    max_t: int,
    study_dir: str | Path,
    lr_low: float = 1e-5,
    lr_high: float = 1.0,
    seed: int = 0,
):
    """Searcher + scheduler pair wired together (the searcher saves the scheduler's rungs)."""
    from tuner.service.search.scheduler import PerCellScheduler
    from tuner.service.search.searcher import PerCellSearcher

    scheduler = PerCellScheduler(
        metric=METRIC,
        mode=MODE,
        time_attr=TIME_ATTR,
        max_t=max_t,
        grace_period=1,
        reduction_factor=3,
    )
    searcher = PerCellSearcher(
        cells,
        trials_per_cell,
        lr_low,
        lr_high,
        metric=METRIC,
        mode=MODE,
        time_attr=TIME_ATTR,
        max_t=max_t,
        study_dir=study_dir,
        seed=seed,
        scheduler=scheduler,
    )
    return searcher, scheduler


def summarize(searcher, results) -> dict[str, Any]:
    """What the test checks: Optuna view (journals), scheduler rungs, Tune's trial list."""
    scheduler = searcher.scheduler
    return {
        "counts": state_counts(searcher),
        "best": searcher.best_per_cell(),
        "trials": searcher.trials_dataframe().to_dict(orient="records"),
        "rungs": scheduler.rungs() if scheduler else None,
        "scheduler_state": scheduler.get_state() if scheduler else None,
        "searcher_state": searcher.get_state(),
        "tune_trials": [
            {
                "trial_id": r.metrics.get("trial_id"),
                "cell": r.config["cell"],
                "lr": r.config["lr"],
                "step": r.metrics.get(TIME_ATTR),
            }
            for r in results
        ],
    }


def run(
    storage: str,
    name: str,
    study_dir: str,
    cells: dict[str, dict],
    trials_per_cell: int,
    max_t: int,
    sleep: float,
) -> dict[str, Any]:
    """Runs or resumes the experiment on the connected Ray cluster; returns the summary."""
    from ray import tune

    cells = {c: {"max_t": max_t, "sleep": sleep, **settings} for c, settings in cells.items()}
    exp_dir = os.path.join(os.path.abspath(storage), name)
    if tune.Tuner.can_restore(exp_dir):
        print(f"restoring {exp_dir}", flush=True)
        tuner = tune.Tuner.restore(exp_dir, synthetic_trainable)
    else:
        searcher, scheduler = build_search(cells, trials_per_cell, max_t, study_dir)
        tuner = tune.Tuner(
            synthetic_trainable,
            tune_config=tune_config(searcher, scheduler),
            run_config=tune.RunConfig(storage_path=os.path.abspath(storage), name=name, verbose=0),
        )
    results = tuner.fit()

    fresh, _ = build_search(cells, trials_per_cell, max_t, study_dir)
    fresh.restore_from_dir(exp_dir)
    return summarize(fresh, results)



def state_counts(searcher) -> dict[str, dict[str, int]]:
    """Per cell, the number of Optuna trials in each state (every ``TrialState`` name)."""
    from optuna.trial import TrialState

    df = searcher.trials_dataframe()
    return {cell: {s.name: int(((df.cell == cell) & (df.state == s.name)).sum())
                   for s in TrialState} for cell in dict.fromkeys(df.cell)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--study-dir", required=True)
    parser.add_argument("--cells", required=True, help="JSON: cell id -> fixed settings")
    parser.add_argument("--trials-per-cell", type=int, default=6)
    parser.add_argument("--max-t", type=int, default=9)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds per step")
    parser.add_argument("--summary", required=True)
    args = parser.parse_args(argv)

    # Snapshot often so a kill loses little; read when the TuneController is built.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Under `uv run`, Ray 2.60 re-creates the uv env for every worker from a packaged
    # working_dir (ray/_private/worker.py:1426: slow, needs network); workers share this
    # interpreter instead. Read once when ray is imported.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, address="local")
    summary = run(
        args.storage,
        args.name,
        args.study_dir,
        json.loads(args.cells),
        args.trials_per_cell,
        args.max_t,
        args.sleep,
    )
    Path(args.summary).write_text(json.dumps(summary, default=str))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

