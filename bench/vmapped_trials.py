"""K search trials of a cell (different learning rates) in one vmapped program vs one trial per
program, for exp3's patch sizes at the SPEC model size; trials per GPU-hour for exp3's grid.

    python -m bench.vmapped_trials [--patches 1 8 32] [--k 1 4 8] [--optimizer adamw]

Each (patch, K) compiles ``tuner.core.steps.train_steps_members`` once, then times ``--calls``
dispatches of ``--steps`` steps. K = 1 is the solo trial; K trials as separate processes packed
on the GPU total about the solo throughput (bench.packing: 4 processes at 0.25 GPU gave 0.94-1.0x
one), so the solo figure stands for packed trials too. ``trials_per_gpu_hour`` counts full-budget
trials (``--budget`` steps, exp3's 30,000; ASHA's early stops not modelled); the grid line sums
exp3's search stage (cells x trials per cell, every cell's patch size in ``--patches``
interpolated to the nearest measured one) at the solo rate and at the best K.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from bench.common import default_run, emit, fast_attention, timed
from tuner.core import steps
from tuner.core.loop import Run

EXP3_PATCHES = (1, 2, 4, 8, 16, 32)  # search_spaces/exp3.yaml grid
EXP3_CELLS_PER_PATCH = 4  # x lambda_val (2) x structure (2)
EXP3_TRIALS_PER_CELL = 12
EXP3_STEPS = 30_000


def members_rate(run: Run, k: int, n_steps: int, calls: int) -> tuple[float, float, float]:
    """(member steps per second, compile seconds, last mean loss) of K members, each with its
    own learning rate (log-spaced over exp3's search range)."""
    lrs = jnp.geomspace(3e-5, 3e-3, k) if k > 1 else jnp.array([run.cfg.train.lr])
    hps = steps.stack([run.hparams._replace(lr=lr.astype(jnp.float32)) for lr in lrs])
    states = steps.stack([run.init_state() for _ in range(k)])
    kw = {"spec": run.spec, "n_steps": n_steps}
    (states, _), compile_s = timed(steps.train_steps_members, states, run.task, hps, **kw)
    total = 0.0
    for _ in range(calls):
        (states, m), dt = timed(steps.train_steps_members, states, run.task, hps, **kw)
        total += dt
    return k * n_steps * calls / total, compile_s, float(jnp.mean(m["loss"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--patches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--budget", type=int, default=EXP3_STEPS)
    a = p.parse_args()
    rates: dict[tuple[int, int], float] = {}
    for patch in a.patches:
        run = Run(default_run(**{"model.patch_size": patch, "train.batch_size": a.batch,
                                 "model.compute_dtype": "bfloat16", "train.optimizer": a.optimizer,
                                 "model.attention_impl": fast_attention()}))
        for k in a.k:
            try:
                rate, compile_s, loss = members_rate(run, k, a.steps, a.calls)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at large K: go on
                emit(bench="vmapped_trials", patch=patch, k=k, error=f"{type(e).__name__}: "
                     f"{str(e)[:300]}")
                continue
            rates[patch, k] = rate
            solo = rates.get((patch, min(a.k)))
            emit(bench="vmapped_trials", patch=patch, k=k, batch=a.batch,
                 optimizer=a.optimizer, member_steps_per_s=round(rate, 1),
                 ms_per_program_step=round(k / rate * 1e3, 3),
                 speedup_vs_solo=round(rate / solo, 2) if solo else None,
                 trials_per_gpu_hour=round(3600 * rate / a.budget, 2),
                 compile_s=round(compile_s, 1), loss=loss)
        jax.clear_caches()
    _grid_summary(rates, a)


def _grid_summary(rates: dict[tuple[int, int], float], a) -> None:
    """GPU-hours of exp3's search stage (full budgets) at the solo rate and at the best K."""
    measured = sorted({p for p, _ in rates})
    if not measured:
        return
    nearest = {p: min(measured, key=lambda m, p=p: abs(m - p)) for p in EXP3_PATCHES}
    trials = EXP3_CELLS_PER_PATCH * EXP3_TRIALS_PER_CELL  # per patch size
    hours = {}
    for label, pick in (("solo", lambda p: rates.get((p, min(a.k)))),
                        ("best_k", lambda p: max(r for (q, _), r in rates.items() if q == p))):
        per_patch = {p: pick(nearest[p]) for p in EXP3_PATCHES}
        if any(r is None for r in per_patch.values()):
            continue
        hours[label] = sum(trials * a.budget / r / 3600 for r in per_patch.values())
    emit(bench="vmapped_trials_grid", grid="exp3", trials=trials * len(EXP3_PATCHES),
         steps_per_trial=a.budget, patch_measured_for=nearest,
         best_k={p: max((kk for (q, kk) in rates if q == p),
                        key=lambda kk, p=p: rates[p, kk]) for p in measured},
         gpu_hours={k: round(v, 2) for k, v in hours.items()},
         trials_per_gpu_hour={k: round(trials * len(EXP3_PATCHES) / v, 1)
                              for k, v in hours.items()},
         gain=round(hours["solo"] / hours["best_k"], 2) if len(hours) == 2 else None)


if __name__ == "__main__":
    main()
