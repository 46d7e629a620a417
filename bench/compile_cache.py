"""Compile cost of a trial: a cold process vs one that finds the persistent compilation cache.

    python -m bench.compile_cache [--dir /tmp/jax_cache_bench] [--batch 64]

Runs the same short training in fresh processes sharing one cache directory
(tuner.core.compile_cache) and reports, per process: time to the first finished step (imports,
task, init, compile, one dispatch), the step's ``lower().compile()`` alone (compile or cache
load), the first ``train_steps`` call after it and a second one (the first run's extra is
runtime setup such as cuDNN plans, not compilation), and JAX's own count of cache hits and
misses.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

WORKER = """
import sys, time, json
t0 = time.perf_counter()
from tuner.core.compile_cache import enable
enable(sys.argv[1])
import jax
events = []
jax.monitoring.register_event_listener(lambda e, **kw: events.append(e))
from bench.common import default_run
from tuner.core import steps
from tuner.core.loop import Run
attention = None if sys.argv[3] == "default" else sys.argv[3]
run = Run(default_run(**{"model.compute_dtype": "bfloat16", "model.attention_impl": attention,
                         "train.batch_size": int(sys.argv[2])}))
t_setup = time.perf_counter()
state = run.init_state()
jax.block_until_ready(state)
t_init = time.perf_counter()
compiled = steps.train_steps.lower(state, run.task, run.hparams, spec=run.spec,
                                     n_steps=50).compile()
t_compile = time.perf_counter()
state, m = compiled(state, run.task, run.hparams)
jax.block_until_ready(m)
t_first = time.perf_counter()
state, m = compiled(state, run.task, run.hparams)
jax.block_until_ready(m)
t_second = time.perf_counter()
print(json.dumps({"to_first_step_s": t_first - t0, "setup_s": t_setup - t0,
                  "init_s": t_init - t_setup, "first_call_s": t_first - t_init,
                  "lower_compile_s": t_compile - t_init, "first_run_s": t_first - t_compile,
                  "compiled_call_s": t_second - t_first,
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", default="/tmp/jax_cache_bench")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--attention", default="cudnn")
    p.add_argument("--processes", type=int, default=3)
    a = p.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    runs = []
    for _ in range(a.processes):
        res = subprocess.run([sys.executable, "-c", WORKER, a.dir, str(a.batch), a.attention],
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(res.stderr[-2000:])
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    import jax

    r = lambda d: {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}  # noqa: E731
    print(json.dumps({"device": jax.devices()[0].device_kind, "bench": "compile_cache",
                      "batch": a.batch, "cold": r(runs[0]), "cached": [r(x) for x in runs[1:]],
                      "step_compile_cold_s": round(runs[0]["lower_compile_s"], 2),
                      "step_compile_cached_s": round(runs[-1]["lower_compile_s"], 2),
                      "first_run_extra_cached_s": round(runs[-1]["first_run_s"]
                                                        - runs[-1]["compiled_call_s"], 2)}),
          flush=True)


if __name__ == "__main__":
    main()
