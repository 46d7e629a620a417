"""K seeds of a cell in one vmapped program vs K separate runs (finals), per patch size.

    python -m bench.seeds [--k 4] [--patches 1 8 32]
"""

from __future__ import annotations

import argparse

from bench.common import default_run, emit, fast_attention, timed
from tuner.core import steps
from tuner.core.loop import Run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--patches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    for patch in a.patches:
        run = Run(default_run(**{"model.patch_size": patch, "train.batch_size": a.batch,
                                 "model.compute_dtype": "bfloat16",
                                 "model.attention_impl": fast_attention()}))
        kw = {"spec": run.spec, "n_steps": a.steps}
        state = run.init_state()
        (state, _), _ = timed(steps.train_steps, state, run.task, run.hparams, **kw)
        (state, _), one_s = timed(steps.train_steps, state, run.task, run.hparams, **kw)
        states = steps.init_states(run.spec, run.task, list(range(a.k)))
        tasks = steps.stack([run.task] * a.k)
        (states, _), _ = timed(steps.train_steps_seeds, states, tasks, run.hparams, **kw)
        (states, _), vmap_s = timed(steps.train_steps_seeds, states, tasks, run.hparams, **kw)
        emit(bench="seeds", patch=patch, k=a.k, batch=a.batch,
             separate_ms_per_step=round(a.k * one_s / a.steps * 1e3, 3),
             vmapped_ms_per_step=round(vmap_s / a.steps * 1e3, 3),
             speedup=round(a.k * one_s / vmap_s, 2))


if __name__ == "__main__":
    main()
