"""The search's throughput on one GPU: today's path (one trial per program, ASHA) against
populations (K rates of a cell, or of the 4 cells that share exp3's program, in one vmapped
program, halved at rungs, stopped members cut from the program), at the SPEC model size.

    python -m bench.population_speed [--patches 1 8 32] [--k 8 16] [--share 4]

For every population size a halving passes through (K, K/3, ... per cell) it compiles
``tuner.core.steps.train_steps_population`` once and times ``--calls`` dispatches of
``--steps`` steps; a population's wall time is then its halving schedule
(:func:`tuner.service.search.halving.member_steps` segment by segment) at the measured rates,
plus one compile per size; ``seconds_if_masked`` is the alternative that keeps stopped members
in the program (one compile, every segment at the full population's rate).
Today's path: one trial's rate (K trials packed on a GPU total about
one trial's throughput: bench.packing) over the ASHA-expected steps of a trial
(:func:`tuner.service.pilot.project.asha_expected_steps`, exp3's 12 trials per cell, grace
3,000, rf 3). Both report member trials per GPU-hour, halving included.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from bench.common import default_run, emit, fast_attention, timed
from tuner.core import steps
from tuner.core.config import replace
from tuner.core.loop import Run
from tuner.service.pilot.project import asha_expected_steps
from tuner.service.search.halving import keep_count, rungs

BUDGET, RF = 30_000, 3.0  # search_spaces/exp3.yaml
GRACE_TODAY, TRIALS_TODAY = 3_000, 12  # exp3 before populations: ASHA over 12 trials a cell
GRACE = 2_000  # exp3 now: populations halved at 2,000, 6,000 and 18,000 steps


def population_rate(runs: list[Run], n_steps: int, calls: int) -> tuple[float, float]:
    """(member steps per second, compile seconds) of the members ``runs`` in one program."""
    states = steps.stack([r.init_state() for r in runs])
    tasks = steps.stack([r.task for r in runs])
    hps = steps.stack([r.hparams for r in runs])
    kw = {"spec": runs[0].spec, "n_steps": n_steps}
    (states, _), compile_s = timed(steps.train_steps_population, states, tasks, hps, **kw)
    total = 0.0
    for _ in range(calls):
        (states, _), dt = timed(steps.train_steps_population, states, tasks, hps, **kw)
        total += dt
    return len(runs) * n_steps * calls / total, compile_s


def schedule(k: int) -> list[tuple[int, int]]:
    """(members per cell alive, steps) segments of one population's halving."""
    out, alive, start = [], k, 0
    for r in rungs(GRACE, RF, BUDGET):
        out.append((alive, r - start))
        alive, start = keep_count(alive, RF), r
    return out + [(alive, BUDGET - start)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--patches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--k", type=int, nargs="+", default=[8])
    p.add_argument("--share", type=int, default=4, help="cells sharing one program (exp3: 4)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--calls", type=int, default=3)
    a = p.parse_args()
    asha_steps = asha_expected_steps(TRIALS_TODAY, GRACE_TODAY, BUDGET, RF)
    for patch in a.patches:
        base = default_run(**{"model.patch_size": patch, "train.batch_size": 64,
                              "model.compute_dtype": "bfloat16",
                              "model.attention_impl": fast_attention()})
        cells = [replace(base, **{"data.lambda_val": lam, "data.structure": st})
                 for lam in (0.68, 0.96) for st in ("dense", "diagonal")][:a.share]
        solo, solo_compile = population_rate([Run(base)], a.steps, a.calls)
        today = 3600 / (asha_steps / solo)
        emit(bench="population_speed", patch=patch, path="today (1 trial, ASHA)",
             member_steps_per_s=round(solo, 1), steps_per_trial=round(asha_steps),
             trials_per_gpu_hour=round(today, 2), compile_s=round(solo_compile, 1))
        rates: dict[int, tuple[float, float]] = {}  # members in the program -> rate, compile
        for k in a.k:
            for n_cells in sorted({1, a.share}):
                seconds, steps_done, masked, compiled = 0.0, 0, 0.0, set()
                try:
                    for alive, n in schedule(k):
                        size = alive * n_cells
                        if size not in rates:
                            lrs = jnp.geomspace(3e-5, 3e-3, alive)
                            members = [Run(replace(c, **{"train.lr": float(lr)}))
                                       for c in cells[:n_cells] for lr in lrs]
                            rates[size] = population_rate(members, a.steps, a.calls)
                        if size not in compiled:  # each size compiles once per worker
                            seconds += rates[size][1]
                            compiled.add(size)
                        seconds += n * size / rates[size][0]
                        steps_done += n * size
                        # masking instead: every member stays in the program to the end
                        masked += n * k * n_cells / rates[k * n_cells][0]
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large K
                    emit(bench="population_speed", patch=patch, k=k, cells=n_cells,
                         error=f"{type(e).__name__}: {str(e)[:300]}")
                    continue
                trials_per_hour = 3600 * k * n_cells / seconds
                emit(bench="population_speed", patch=patch, path="population", k=k,
                     cells=n_cells, member_steps_per_s={n: round(r, 1)
                                                        for n, (r, _) in rates.items()},
                     steps_per_member=round(steps_done / (k * n_cells)),
                     seconds_per_population=round(seconds, 1),
                     seconds_if_masked=round(masked + rates[k * n_cells][1], 1),
                     trials_per_gpu_hour=round(trials_per_hour, 2),
                     vs_today=round(trials_per_hour / today, 2),
                     member_step_rate_vs_solo=round(rates[k * n_cells][0] / solo, 2))
        jax.clear_caches()


if __name__ == "__main__":
    main()
