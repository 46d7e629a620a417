"""Rollout evaluation speed and memory: 8192 sequences, warmup 64, 64 generated steps.

    python -m bench.rollout [--n 8192] [--budget-gb 4]

Reports the memory estimate (data.lds_rollout.memory_per_sequence) against the measured device
peak, the first call (with compilation) and a second, compiled call.
"""

from __future__ import annotations

import argparse

import jax

from bench.common import default_run, emit, timed
from data.lds_rollout import (
    RolloutConfig,
    chunk_size,
    describe_memory,
    evaluate_rollouts,
    memory_per_sequence,
)
from tuner.core.loop import Run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--budget-gb", type=float, default=4.0)
    p.add_argument("--dtype", default="bfloat16")
    a = p.parse_args()
    run = Run(default_run(**{"model.compute_dtype": a.dtype}))
    params = run.init_state().params
    cfg = RolloutConfig(n_sequences=a.n, memory_budget_gb=a.budget_gb)
    print(describe_memory(run.model, cfg), flush=True)
    stats = jax.devices()[0].memory_stats() or {}
    base = stats.get("bytes_in_use", 0)
    scores, first_s = timed(evaluate_rollouts, params, run.task, run.model, cfg)
    _, second_s = timed(evaluate_rollouts, params, run.task, run.model, cfg)
    chunk = chunk_size(run.model, cfg)
    estimate = chunk * memory_per_sequence(run.model, cfg.warmup, cfg.n_steps)
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    emit(bench="rollout", n=a.n, dtype=a.dtype, chunk=chunk, first_call_s=round(first_s, 2),
         compiled_call_s=round(second_s, 2), estimate_GiB=round(estimate / 2**30, 3),
         peak_GiB=None if peak is None else round((peak - base) / 2**30, 3),
         score_t1=scores["eval/score_t+1"])


if __name__ == "__main__":
    main()
