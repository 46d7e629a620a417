"""The hard setting (lambda 0.99, dense A): does the default model beat the zero predictor?

Why this exists: on an H200 the default model (4 layers, d_model 256, bf16 + cuDNN attention,
lr 1e-3, 30,000 steps) at lambda 0.99 / dense / patch 8 ended worse than predicting zero
(eval/nmse 2.38 against the zero predictor's 1.41), with ``grad_norm = inf`` in its last record,
while the same model was fine at lambda 0.9 and a small float32 model was fine at lambda 0.99 on
the CPU. This bench trains named variants of that run side by side (one process per variant,
``--variant``), each an ablation of one suspect (bf16, cuDNN attention, causal RevIN, the 1/kf_T
loss weights, the learning rate, Adam's b2, the model size), and prints for each the final nmse,
nmse_info and skill next to the zero predictor's (``task.zero_predictor_metrics()``), the largest
per-step gradient norm of the whole run and whether every step's gradient norm was finite.
``tuner.core.loop.Run`` logs only the mean gradient norm of each chunk, which hides single bad
steps: this bench runs its own chunks, recording the max and counting non-finite steps.

    python -m bench.hard_setting --variant base_p8 --out runs/hard   # one variant
    python -m bench.hard_setting --list                                # the variant table
    python -m bench.hard_setting --summarize runs/hard                 # table of finished runs

``--steps`` sets the schedule (warmup + cosine over that many steps); ``--stop-at`` ends the
run early on the same schedule (a prefix of the full run, to locate a failure cheaply).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bench.common import fast_attention
from data.lds_task import LDSTask
from models import config as model_config
from models import registry
from models.inputs import PatchInput, causal_stats, to_patches
from tuner.core import steps
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run


@flax.struct.dataclass
class UniformWeightTask(LDSTask):
    """Ablation of the per-position 1/kf_T loss weights: one constant weight, 1/mean(kf_T)."""

    def loss(self, pred_BxTxY, y_BxTxY):
        diff = pred_BxTxY.astype(jnp.float32) - y_BxTxY.astype(jnp.float32)
        return jnp.mean(jnp.sum(diff**2, -1)[:, 1:]) / jnp.mean(self.kf_T[1:])


class ZeroStartInput(PatchInput):
    """The input layer as it was before the fix (HEAD c670c1f): token 0 = embed(zero patch), i.e.
    the embedding bias alone (zero at init, the same for every sequence). For the ablations."""

    def setup(self) -> None:
        self.embed = nn.Dense(self.cfg.d_model, name="embed")

    def __call__(self, y_BxTxY):
        p = self.cfg.patch_size
        patches = to_patches(y_BxTxY.astype(jnp.float32), p)
        inputs_BxNxPxY = jnp.concatenate([jnp.zeros_like(patches[:, :1]), patches[:, :-1]], 1)
        stats = causal_stats(y_BxTxY, p)
        return self._embed(inputs_BxNxPxY, stats), stats


# the ablation's input layer, registered for this process only (the config checks names against
# the plain tuple, the registry maps them to classes)
registry.INPUT_LAYERS.setdefault("patch_zero_start", ZeroStartInput)
if "patch_zero_start" not in model_config.INPUT_LAYERS:
    model_config.INPUT_LAYERS = (*model_config.INPUT_LAYERS, "patch_zero_start")

HARD = {"data.lambda_val": 0.99, "data.structure": "dense", "model.patch_size": 8,
        "train.lr": 1e-3}
GPU = {"model.compute_dtype": "bfloat16", "model.attention_impl": "cudnn"}  # the GPU default
SMALL = {"model.n_layers": 2, "model.d_model": 64, "model.d_ff": 256}
OLD = {**HARD, **GPU, "model.input_layer": "patch_zero_start"}  # the run of the issue

# name -> (overrides on the SPEC defaults, the suspect it tests). head_*: token 0 as at HEAD
# (zero patch -> embedding bias); fixed_*: the learned start token (models/inputs.py).
VARIANTS: dict[str, tuple[dict, str]] = {
    "head_p8": (OLD, "the failing run: bf16 + cuDNN, lr 1e-3, lambda 0.99, patch 8"),
    "head_p1": ({**OLD, "model.patch_size": 1}, "same at patch 1"),
    "head_p8_l09": ({**OLD, "data.lambda_val": 0.9}, "same at lambda 0.9"),
    "head_f32_p8": ({**OLD, "model.compute_dtype": "float32", "model.attention_impl": None},
                    "bf16 and cuDNN out: float32, XLA attention"),
    "head_bf16xla_p8": ({**OLD, "model.attention_impl": "xla"}, "cuDNN out, bf16 kept"),
    "head_norevin_p8": ({**OLD, "model.revin": False}, "causal RevIN out"),
    "head_uniformw_p8": (OLD, "1/kf_T per-position weights out (one constant weight)"),
    "head_lr3e-4_p8": ({**OLD, "train.lr": 3e-4}, "lr 3x lower"),
    "head_b2_999_p8": ({**OLD, "train.b2": 0.999}, "Adam b2 0.999"),
    "head_small_p8": ({**OLD, **SMALL}, "2 layers, d_model 64 (the CPU model) on the GPU"),
    "fixed_p8": ({**HARD, **GPU}, "the fix (learned start token), lambda 0.99, patch 8"),
    "fixed_p1": ({**HARD, **GPU, "model.patch_size": 1}, "the fix, lambda 0.99, patch 1"),
    "fixed_p8_l09": ({**HARD, **GPU, "data.lambda_val": 0.9}, "the fix, lambda 0.9, patch 8"),
}


def config_for(name: str, steps: int, extra: dict | None = None) -> RunConfig:
    overrides, _ = VARIANTS[name]
    over = {**overrides, "train.steps": steps, "train.eval_every": 500, **(extra or {})}
    if over.get("model.attention_impl") == "cudnn" and fast_attention() != "cudnn":
        over["model.attention_impl"] = None  # off the GPU: JAX's choice (same maths)
    return replace(RunConfig(rollout_after=False), **over)


def _chunk(spec, task, hp, state, n_steps):
    def body(s, _):
        s, m = steps.one_step(spec, task, hp, s)
        return s, m

    state, m = jax.lax.scan(body, state, None, length=n_steps)
    g = m["grad_norm"]
    return state, {"loss": m["loss"].mean(), "max_loss": m["loss"].max(),
                   "grad_norm": jnp.where(jnp.isfinite(g), g, 0.0).mean(),
                   "max_grad_norm": g.max(),  # inf/nan propagate: a bad step shows
                   "n_nonfinite_grad": jnp.sum(~jnp.isfinite(g)),
                   "n_nonfinite_loss": jnp.sum(~jnp.isfinite(m["loss"]))}


_chunk_jit = jax.jit(_chunk, static_argnames=("spec", "n_steps"), donate_argnames=("state",))


def train_variant(name: str, steps: int, stop_at: int | None, out: Path,
                  extra: dict | None = None, label: str | None = None) -> dict:
    """Trains one variant; writes ``<out>/<name>.jsonl`` (one line per evaluation) and returns
    its summary (also appended to ``<out>/summary.jsonl``)."""
    label = label or name
    cfg = config_for(name, steps, extra)
    run = Run(cfg)
    if "uniformw" in name:
        run.task = UniformWeightTask(**{f.name: getattr(run.task, f.name)
                                        for f in dataclasses.fields(run.task)})
    zero = run.task.zero_predictor_metrics()
    state = run.init_state()
    end = min(steps, stop_at or steps)
    every = cfg.train.eval_every
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{label}.jsonl"
    log.unlink(missing_ok=True)
    max_g, nonfinite, step, started, last = 0.0, 0, 0, time.perf_counter(), {}
    first_bad = None
    while step < end:
        n = min(every, end - step)
        state, m = _chunk_jit(run.spec, run.task, run.hparams, state, n_steps=n)
        m = {k: float(v) for k, v in m.items()}
        step += n
        max_g = max(max_g, m["max_grad_norm"]) if math.isfinite(m["max_grad_norm"]) else math.inf
        nonfinite += int(m["n_nonfinite_grad"])
        if m["n_nonfinite_grad"] and first_bad is None:
            first_bad = step
        metrics, curve = run.evaluate(state)
        last = {"step": step, **m, **{f"eval/{k}": v for k, v in metrics.items()}}
        with log.open("a") as f:
            f.write(json.dumps(last) + "\n")
        print(f"[{label}] step {step:>6} loss {m['loss']:.4g} max_loss {m['max_loss']:.4g} "
              f"gmax {m['max_grad_norm']:.3g} nmse {metrics['nmse']:.4f} "
              f"info {metrics['nmse_info']:.4f} skill {metrics['skill']:.3f} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)
        if not math.isfinite(m["loss"]):
            break
    err = np.asarray(curve)
    kf = np.asarray(run.task.kf_T)
    p = cfg.model.patch_size
    per_token = (err[: (len(err) // p) * p].reshape(-1, p).sum(1)
                 / kf[: (len(kf) // p) * p].reshape(-1, p).sum(1))
    summary = {"variant": label, "suspect": VARIANTS[name][1], "steps": step,
               "schedule_steps": steps, "lr": cfg.train.lr,
               "nmse": last.get("eval/nmse"), "nmse_info": last.get("eval/nmse_info"),
               "skill": last.get("eval/skill"), "zero_nmse": zero["nmse"],
               "zero_nmse_info": zero["nmse_info"], "max_grad_norm": max_g,
               "grad_finite_throughout": nonfinite == 0, "n_nonfinite_grad": nonfinite,
               "first_nonfinite_chunk_end": first_bad, "weight_norm": last.get("eval/weight_norm"),
               "nmse_first_tokens": [round(float(x), 3) for x in per_token[:6]],
               "nmse_last_token": float(per_token[-1]),
               "wall_s": time.perf_counter() - started,
               "device": jax.devices()[0].device_kind, "extra": extra or {}}
    with (out / "summary.jsonl").open("a") as f:
        f.write(json.dumps(summary) + "\n")
    return summary


def table(rows: list[dict]) -> str:
    head = ("| variant | steps | lr | nmse | nmse_info | skill | zero nmse | zero nmse_info | "
            "max grad_norm | finite |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['steps']:,} | {r['lr']:g} | {r['nmse']:.4f} | "
                     f"{r['nmse_info']:.4f} | {r['skill']:.3f} | {r['zero_nmse']:.4f} | "
                     f"{r['zero_nmse_info']:.4f} | {r['max_grad_norm']:.3g} | "
                     f"{'yes' if r['grad_finite_throughout'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[], help="name (repeatable)")
    ap.add_argument("--steps", type=int, default=30000, help="schedule length")
    ap.add_argument("--stop-at", type=int, default=None, help="stop early, same schedule")
    ap.add_argument("--set", action="append", default=[],
                    help="extra override, dotted=value (json value), e.g. train.lr=3e-4")
    ap.add_argument("--tag", default="", help="suffix of the output name")
    ap.add_argument("--out", default="runs/hard_setting")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--summarize", default=None, help="print the table of a finished --out")
    a = ap.parse_args(argv)
    if a.list:
        for k, (o, why) in VARIANTS.items():
            print(f"{k:14s} {why}: {o}")
        return
    if a.summarize:
        rows = [json.loads(x) for x in (Path(a.summarize) / "summary.jsonl").read_text()
                .splitlines() if x.strip()]
        print(table(rows))
        return
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    rows = []
    for name in a.variant:
        s = train_variant(name, a.steps, a.stop_at, Path(a.out), extra, name + a.tag)
        rows.append(s)
        print(json.dumps(s), flush=True)
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())
