"""One training run from the command line, no Ray involved.

    python -m tuner.train --data.lambda_val 0.96 --model.patch_size 4 --train.steps 2000 \
        --out-dir runs/lam096_p4

Writes ``metrics.jsonl`` (one line per evaluation), ``checkpoint/`` (the full train state, so
rerunning the same command resumes where it stopped) and ``summary.json`` (final metrics,
rollout scores, wall time) into ``--out-dir``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import tyro

from tuner.core import checkpoint
from tuner.core.config import RunConfig
from tuner.core.loop import Progress, Run


def run(cfg: RunConfig) -> dict:
    """Trains (resuming from ``out_dir/checkpoint`` if present), evaluates, writes the summary."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    started = time.perf_counter()
    r = Run(cfg)
    state, progress = r.init_state(), None
    ckpt = out / "checkpoint"
    if ckpt.exists() or ckpt.with_name("checkpoint.old").exists():
        state, progress = checkpoint.restore(ckpt, state)
        print(f"resumed from {ckpt} at step {int(state.step)}")
    zero = r.task.zero_predictor_metrics()
    reported = type(r.task).REPORTED
    print("trivial predictor: " + "  ".join(f"{k} {zero[k]:.4g}" for k in reported if k in zero))
    last: dict = {}

    def on_eval(metrics: dict, st) -> None:
        nonlocal last
        last = metrics
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        checkpoint.save_replacing(ckpt, st, progress)
        scores = "  ".join(f"{k} {metrics[f'eval/{k}']:.4g}" for k in reported)
        print(f"step {metrics['step']:>6}  loss {metrics['train_loss']:.4g}  {scores}  "
              f"({time.perf_counter() - started:.1f}s)", flush=True)

    progress = progress or Progress.start(1)
    state = r.train(state, on_eval, progress)
    if not last:
        last, _ = r.evaluate(state)
        last = {f"eval/{k}": v for k, v in last.items()}
    summary = dict(last)
    if cfg.rollout_after:
        if plan := r.task.after_training_plan(r.model, cfg):
            print(plan)
        summary |= r.task.after_training(state.params, r.model, cfg)
    summary["wall_s"] = time.perf_counter() - started
    summary["zero_predictor"] = zero
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


def main() -> None:
    run(tyro.cli(RunConfig))
