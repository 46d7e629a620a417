"""Modular arithmetic: when (and whether) a run groks, per (p, train fraction, norm, schedule,
weight decay, architecture).

    python -m bench.grokking [--steps 30000] [--runs 113:0.3:none:constant 17:0.5:none:constant:3]

A run is ``p:train_frac:norm:schedule[:weight_decay[:arch]]`` (weight decay default ``--wd``,
arch ``transformer`` or ``mlp``). The transformer is the grokking search space's model (1 layer,
d_model 128, 4 heads, learned positions); ``mlp`` is the one-hot MLP baseline (concatenated
one-hot a, op, b, = -> Dense(128) -> one residual GELU block of width 512 -> classifier).
Both train with AdamW lr 1e-3, decay on matrices only, betas (0.9, 0.98), 1% warmup, full
batch. Prints one JSON line per run: the grokking step (first evaluation with test accuracy
>= 95%, None if never), the step test accuracy reached 100%, final accuracies and wall time.
Anchor: TransformerLens' grokking demo (p 113, 30% train, no LayerNorm) groks at ~12-14k steps.
"""

from __future__ import annotations

import argparse
import time

from bench.common import emit
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Progress, Run

ARCHS = {
    "transformer": {"model.input_layer": "tokens", "model.backbone": "toy"},
    "mlp": {"model.input_layer": "onehot", "model.backbone": "mlp"},
}


def config(p: int, frac: float, norm: str, schedule: str, steps: int, lr: float, wd: float,
           arch: str = "transformer") -> RunConfig:
    return replace(RunConfig(), task="modular", **{
        "modular.p": p, "modular.train_frac": frac, **ARCHS[arch],
        "model.head": "classifier", "model.attention": "softmax",
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
                    help="p:train_frac:norm:schedule[:weight_decay[:arch]]")
    a = ap.parse_args()
    for spec in a.runs:
        p, frac, norm, schedule, *rest = spec.split(":")
        wd = float(rest[0]) if rest else a.wd
        arch = rest[1] if len(rest) > 1 else "transformer"
        run = Run(config(int(p), float(frac), norm, schedule, a.steps, a.lr, wd, arch))
        history: list[dict] = []
        start = time.perf_counter()
        progress = Progress.start(1)
        run.train(run.init_state(), lambda m, s, history=history: history.append(m), progress)
        perfect = next((m["step"] for m in history if m["eval/test_acc"] >= 1.0), None)
        last = history[-1]
        emit(bench="grokking", arch=arch, p=int(p), train_frac=float(frac), norm=norm,
             schedule=schedule, lr=a.lr, weight_decay=wd, steps=a.steps,
             grokking_step=progress.reached[0].get("grokking_step"), perfect_step=perfect,
             final_test_acc=round(last["eval/test_acc"], 4),
             final_train_loss=last["eval/train_loss"], wall_s=round(time.perf_counter() - start, 1))


if __name__ == "__main__":
    main()
