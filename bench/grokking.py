"""Modular arithmetic: when (and whether) a run groks, per (p, train fraction, norm, schedule).

    python -m bench.grokking [--steps 30000] [--runs 113:0.3:none:constant 17:0.5:none:constant]

Each run is the grokking search space's transformer (1 layer, d_model 128, 4 heads, learned
positions, AdamW lr 1e-3, weight decay 1 on matrices, betas (0.9, 0.98), 1% warmup), full
batch. Prints one JSON line per run: the grokking step (first evaluation with test accuracy
>= 95%, None if never), the step test accuracy reached 100%, final accuracies and wall time.
Anchor: TransformerLens' grokking demo (p 113, 30% train, no LayerNorm) groks at ~12-14k steps.
"""

from __future__ import annotations

import argparse
import time

from bench.common import emit
from tuner.config import RunConfig, replace
from tuner.loop import Run


def config(p: int, frac: float, norm: str, schedule: str, steps: int, lr: float, wd: float
           ) -> RunConfig:
    return replace(RunConfig(), task="modular", **{
        "modular.p": p, "modular.train_frac": frac, "model.input_layer": "tokens",
        "model.backbone": "toy", "model.head": "classifier", "model.attention": "softmax",
        "model.mlp": "gelu", "model.norm": norm, "model.rope": False,
        "model.pos_embedding": True, "model.max_len": 4, "model.n_layers": 1,
        "model.d_model": 128, "model.n_heads": 4, "model.d_ff": 512, "train.steps": steps,
        "train.lr": lr, "train.weight_decay": wd, "train.warmup_frac": 0.01, "train.b1": 0.9,
        "train.b2": 0.98, "train.schedule": schedule, "train.eval_every": 100})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=1.0)
    ap.add_argument("--runs", nargs="+", default=["113:0.3:none:constant",
                                                   "113:0.3:layernorm:constant",
                                                   "17:0.3:none:constant", "17:0.5:none:constant",
                                                   "17:0.8:none:constant"],
                    help="p:train_frac:norm:schedule")
    a = ap.parse_args()
    for spec in a.runs:
        p, frac, norm, schedule = spec.split(":")
        run = Run(config(int(p), float(frac), norm, schedule, a.steps, a.lr, a.wd))
        history: list[dict] = []
        start = time.perf_counter()
        run.train(run.init_state(), lambda m, s, history=history: history.append(m))
        perfect = next((m["step"] for m in history if m["eval/test_acc"] >= 1.0), None)
        last = history[-1]
        emit(bench="grokking", p=int(p), train_frac=float(frac), norm=norm, schedule=schedule,
             lr=a.lr, weight_decay=a.wd, steps=a.steps,
             grokking_step=run.milestones.get("grokking_step"), perfect_step=perfect,
             final_test_acc=round(last["eval/test_acc"], 4),
             final_train_loss=last["eval/train_loss"], wall_s=round(time.perf_counter() - start, 1))


if __name__ == "__main__":
    main()
