"""Total training throughput with 1, 2 and 4 trials sharing one GPU (emulating Ray's fractional
GPUs with processes; each sizes its JAX pool with tuner.core.gpu_share).

    python -m bench.packing [--counts 1 2 4] [--batch 64] [--seconds 20]

Every process compiles, waits at a file barrier until all have, then trains for ``--seconds``;
the figure is the sum of their tokens/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

WORKER = """
import json, sys, time
from pathlib import Path
from tuner.core.gpu_share import configure
n, barrier = int(sys.argv[1]), Path(sys.argv[2])
seconds, batch = float(sys.argv[3]), int(sys.argv[4])
configure(1.0 / n)
import jax
from bench.common import default_run, fast_attention
from tuner.core import steps
from tuner.core.loop import Run
run = Run(default_run(**{"model.compute_dtype": "bfloat16", "train.batch_size": batch,
                         "model.attention_impl": fast_attention()}))
state = run.init_state()
kw = dict(spec=run.spec, n_steps=20)
state, m = steps.train_steps(state, run.task, run.hparams, **kw); jax.block_until_ready(m)
(barrier / f"{time.time()}-{id(state)}").touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.05)
steps, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    state, m = steps.train_steps(state, run.task, run.hparams, **kw); jax.block_until_ready(m)
    steps += 20
dt = time.perf_counter() - t0
print(json.dumps({"tokens_per_s": steps * batch * run.cfg.data.seq_len / dt}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20)
    a = p.parse_args()
    for n in a.counts:
        with tempfile.TemporaryDirectory() as barrier:
            procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(n), barrier,
                                       str(a.seconds), str(a.batch)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(n)]
            outs = [pr.communicate() for pr in procs]
        rates, errors = [], []
        for (out, err), pr in zip(outs, procs, strict=True):
            if pr.returncode == 0:
                rates.append(json.loads(out.strip().splitlines()[-1])["tokens_per_s"])
            else:
                errors.append(err.strip().splitlines()[-1][:200] if err.strip() else "?")
        print(json.dumps({"bench": "packing", "trials_per_gpu": n, "batch": a.batch,
                          "ok": len(rates), "total_tokens_per_s_M": round(sum(rates) / 1e6, 2),
                          "per_trial_M": [round(r / 1e6, 2) for r in rates],
                          "errors": errors, "at": time.strftime("%H:%M:%S")}), flush=True)


if __name__ == "__main__":
    main()
