"""Training throughput of the default LDS model: ms per AdamW step and tokens/s.

    python -m bench.train_step [--batches 64 256 1024] [--dtypes bfloat16 float32]
                               [--optimizers adamw adamw_flat]

Each configuration compiles once (reported), then runs ``--calls`` dispatches of
``--steps-per-call`` steps (lax.scan, donated state, no host sync inside) and reports the
steady state. Data are sampled on device inside the step; ``sample_ms`` is the task's sampler
alone (one causal convolution), ``sample_scan_ms`` the reference recursion (lds.sample).
"""

from __future__ import annotations

import argparse

import jax

from bench.common import default_run, emit, timed
from data import lds
from tuner.core import steps
from tuner.core.loop import Run


def _sample_seconds(sample, task, reps: int = 20) -> float:
    """Seconds per call of a jitted ``sample(task, key)`` (the training batch alone)."""
    jax.block_until_ready(sample(task, jax.random.PRNGKey(0)))
    _, total = timed(lambda: [sample(task, jax.random.PRNGKey(i)) for i in range(reps)])
    return total / reps


def measure(batch: int, dtype: str, attention: str | None, steps_per_call: int, calls: int,
            patch: int = 1, optimizer: str = "adamw"):
    cfg = default_run(**{"train.batch_size": batch, "model.compute_dtype": dtype,
                         "model.attention_impl": attention, "model.patch_size": patch,
                         "train.optimizer": optimizer})
    run = Run(cfg)
    state = run.init_state()
    kw = {"spec": run.spec, "n_steps": steps_per_call}
    (state, _), compile_s = timed(steps.train_steps, state, run.task, run.hparams, **kw)
    (state, m), _ = timed(steps.train_steps, state, run.task, run.hparams, **kw)
    total = 0.0
    for _ in range(calls):
        (state, m), dt = timed(steps.train_steps, state, run.task, run.hparams, **kw)
        total += dt
    step_s = total / (calls * steps_per_call)
    sample_s = _sample_seconds(jax.jit(lambda task, key: task.sample(key, batch)), run.task)
    scan_s = _sample_seconds(jax.jit(lambda task, key: lds.sample(
        task.system, key, batch, cfg.data.seq_len)), run.task)
    emit(bench="train_step", batch=batch, patch=patch, dtype=dtype,
         attention=attention or "default", optimizer=optimizer,
         ms_per_step=round(step_s * 1e3, 3),
         tokens_per_s_M=round(batch * cfg.data.seq_len / step_s / 1e6, 2),
         sample_ms=round(sample_s * 1e3, 3), sample_scan_ms=round(scan_s * 1e3, 3),
         first_call_s=round(compile_s, 1),
         loss=float(m["loss"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--attention", nargs="+", default=["default", "cudnn"])
    p.add_argument("--steps-per-call", type=int, default=50)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--patch", type=int, default=1)
    p.add_argument("--optimizers", nargs="+", default=["adamw"],
                   help="train.optimizer names (tuner.core.optimizers.OPTIMIZERS)")
    a = p.parse_args()
    for dtype in a.dtypes:
        for attention in a.attention:
            if attention == "cudnn" and dtype == "float32":
                continue  # cuDNN flash attention takes half precision only
            for batch in a.batches:
                for optimizer in a.optimizers:
                    try:
                        measure(batch, dtype, None if attention == "default" else attention,
                                a.steps_per_call, a.calls, a.patch, optimizer)
                    except Exception as e:  # noqa: BLE001 - report and go on with the others
                        emit(bench="train_step", batch=batch, dtype=dtype,
                             attention=attention, optimizer=optimizer,
                             error=f"{type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    main()
