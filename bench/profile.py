"""Where a training step's GPU time goes: kernel time by kernel, from JAX's own profiler.

    python -m bench.profile [--batch 64] [--dtype bfloat16] [--attention cudnn] [--top 25]
                            [--optimizer adamw]

Traces a few compiled dispatches of ``train_steps`` and sums the device events of the trace
(``jax.profiler.trace(..., create_perfetto_trace=True)`` writes Chrome-trace JSON, which needs no
TensorBoard to read). Reports total kernel time per step against wall time per step (the gap is
launch overhead and idle device) and the largest kernels.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import tempfile
import time

import jax

from bench.common import default_run, emit
from tuner.core import steps
from tuner.core.loop import Run


def device_events(trace_dir: str) -> tuple[list[dict], list[str]]:
    """Complete ('X') events on device tracks of the newest trace under ``trace_dir``, and the
    names of all tracks (to see what the profiler recorded)."""
    path = max(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"),
               key=lambda p: p.stat().st_mtime)
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in names.items() if "device:GPU" in name or "/device" in name}
    return ([e for e in events if e.get("ph") == "X" and e.get("pid") in device_pids],
            sorted(names.values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--attention", default="cudnn")
    p.add_argument("--patch", type=int, default=1)
    p.add_argument("--steps-per-call", type=int, default=10)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--optimizer", default="adamw")
    a = p.parse_args()
    run = Run(default_run(**{"train.batch_size": a.batch, "model.compute_dtype": a.dtype,
                             "model.patch_size": a.patch, "train.optimizer": a.optimizer,
                             "model.attention_impl": None if a.attention == "default"
                             else a.attention}))
    state = run.init_state()
    kw = {"spec": run.spec, "n_steps": a.steps_per_call}
    for _ in range(2):
        state, m = steps.train_steps(state, run.task, run.hparams, **kw)
    jax.block_until_ready(m)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t0 = time.perf_counter()
            for _ in range(a.calls):
                state, m = steps.train_steps(state, run.task, run.hparams, **kw)
            jax.block_until_ready(m)
            wall = time.perf_counter() - t0
        events, tracks = device_events(d)
    n_traced = a.calls * a.steps_per_call
    by_name: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for e in events:
        by_name[e["name"]] += e["dur"]
        count[e["name"]] += 1
    busy_us = sum(by_name.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[: a.top]
    emit(bench="profile", batch=a.batch, dtype=a.dtype, attention=a.attention, patch=a.patch,
         optimizer=a.optimizer,
         wall_ms_per_step_traced=round(wall / n_traced * 1e3, 3),
         kernel_ms_per_step=round(busy_us / n_traced / 1e3, 3),
         events_per_step=round(len(events) / n_traced, 1), tracks=tracks[:8],
         top=[{"name": n[:90], "ms_per_step": round(us / n_traced / 1e3, 4),
               "calls_per_step": round(count[n] / n_traced, 2)} for n, us in top])


if __name__ == "__main__":
    main()
