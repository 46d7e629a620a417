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
import shutil
import time
from pathlib import Path

import tyro

from data.lds_rollout import describe_memory, evaluate_rollouts
from tuner.core import checkpoint
from tuner.core.config import RunConfig
from tuner.core.loop import Run


def run(cfg: RunConfig) -> dict:
    """Trains (resuming from ``out_dir/checkpoint`` if present), evaluates, writes the summary."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    started = time.perf_counter()
    r = Run(cfg)
    state = r.init_state()
    ckpt = out / "checkpoint"
    if ckpt.exists():
        state, meta = checkpoint.restore(ckpt, state)
        r.milestones = dict(meta.get("milestones", {}))
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
        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint.save(tmp, st, {"step": metrics["step"], "milestones": r.milestones})
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)
        scores = "  ".join(f"{k} {metrics[f'eval/{k}']:.4g}" for k in reported)
        print(f"step {metrics['step']:>6}  loss {metrics['train_loss']:.4g}  {scores}  "
              f"({time.perf_counter() - started:.1f}s)", flush=True)

    state = r.train(state, on_eval)
    if not last:
        last, _ = r.evaluate(state)
        last = {f"eval/{k}": v for k, v in last.items()}
    summary = dict(last)
    if cfg.rollout_after and getattr(r.task, "supports_rollout", False):
        print(describe_memory(r.model, cfg.rollout))
        summary |= evaluate_rollouts(state.params, r.task, r.model, cfg.rollout)
    summary["wall_s"] = time.perf_counter() - started
    summary["zero_predictor"] = zero
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


def main() -> None:
    run(tyro.cli(RunConfig))
