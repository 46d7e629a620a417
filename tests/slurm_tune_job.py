"""A small Ray Tune job for the Slurm cluster test (stands in for `python -m tuner.run ...`).

Submitted to the cluster with `ray job submit`, so it runs as a driver on the head and its
trials go to whatever workers the autoscaler brings up. Each trial reports and checkpoints every
iteration, and resumes from its last checkpoint after a failure (e.g. its Slurm worker was
cancelled). Every iteration appends one JSON line to `--progress` saying where it ran:

    {"trial": "...", "iter": 3, "node_id": "<Ray node id>", "instance": "<Slurm job id>",
     "host": "...", "restored_from": 2}

The test reads those lines; on a real cluster the path must be on a shared file system.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import ray
from ray import tune


def trainable(config: dict) -> None:
    """Counts to `iters`, one checkpoint per step, resuming from the last checkpoint."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            start = json.loads(Path(ckpt_dir, "state.json").read_text())["iter"]
    for it in range(start + 1, config["iters"] + 1):
        time.sleep(config["sleep_s"])
        line = {
            "trial": tune.get_context().get_trial_id(),
            "iter": it,
            "node_id": ray.get_runtime_context().get_node_id(),
            "instance": os.environ.get("RAY_CLOUD_INSTANCE_ID", ""),
            "host": socket.gethostname(),
            "restored_from": start,
        }
        with open(config["progress"], "a") as f:
            f.write(json.dumps(line) + "\n")
        with tempfile.TemporaryDirectory() as ckpt_dir:
            Path(ckpt_dir, "state.json").write_text(json.dumps({"iter": it}))
            tune.report(
                {"iter": it, "score": config["lr"] * it},
                checkpoint=tune.Checkpoint.from_directory(ckpt_dir),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", required=True, help="absolute Tune storage path")
    parser.add_argument("--progress", required=True, help="JSON-lines file trials append to")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--sleep-s", type=float, default=1.0)
    args = parser.parse_args()

    ray.init()  # `ray job submit` sets RAY_ADDRESS to the cluster that runs this driver
    head_node = ray.get_runtime_context().get_node_id()
    Path(args.progress).with_suffix(".driver.json").write_text(
        json.dumps({"node_id": head_node, "host": socket.gethostname()})
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={
            "lr": tune.grid_search([10.0**-k for k in range(args.trials)]),
            "iters": args.iters,
            "sleep_s": args.sleep_s,
            "progress": os.path.abspath(args.progress),
        },
        run_config=tune.RunConfig(
            name="slurm_smoke",
            storage_path=os.path.abspath(args.storage),
            failure_config=tune.FailureConfig(max_failures=3),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )
    results = tuner.fit()
    errors = [str(r.error) for r in results if r.error]
    done = [r.metrics.get("iter") for r in results]
    print(f"trials finished: {done}; errors: {errors}", flush=True)
    if errors or any(d != args.iters for d in done):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
