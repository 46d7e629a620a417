"""Compile cost of a trial's first step: a cold process vs one that finds the persistent cache.

    python -m bench.compile_cache [--dir /tmp/jax_cache_bench]

Runs the same short training twice in fresh processes sharing one cache directory and reports
each process's time to its first finished step (build + compile + one dispatch).
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
from tuner.compile_cache import enable
enable(sys.argv[1])
import jax
from bench.common import default_run
from tuner import trainer
from tuner.loop import Run
run = Run(default_run(**{"model.compute_dtype": "bfloat16"}))
state = run.init_state()
state, m = trainer.train_steps(state, run.task, run.hparams, spec=run.spec, n_steps=50)
jax.block_until_ready(m)
print(json.dumps({"first_step_s": time.perf_counter() - t0}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", default="/tmp/jax_cache_bench")
    a = p.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    times = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", WORKER, a.dir], capture_output=True,
                             text=True, check=True).stdout
        times.append(json.loads(out.strip().splitlines()[-1])["first_step_s"])
    import jax

    print(json.dumps({"device": jax.devices()[0].device_kind, "bench": "compile_cache",
                      "cold_process_s": round(times[0], 2),
                      "cached_process_s": round(times[1], 2)}), flush=True)


if __name__ == "__main__":
    main()
