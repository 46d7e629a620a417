"""Kernel-count proxy: fusions and other ops in the compiled HLO of a training step, per optimizer.

    python -m bench.hlo_count [--optimizers adamw adamw_flat] [--batch 4] [--patch 1]

Compiles ``train_steps`` (one step per dispatch: the scan is inlined) and the
optimizer's ``apply`` alone for the SPEC model, and counts what the backend will launch:
``fusion`` instructions (one kernel each on a GPU), and the unfused ops left outside fusions
(custom calls, dots, copies...). On the CPU it is a proxy (XLA's CPU and GPU pipelines fuse
differently; the GPU profile, ``bench.profile``, is the measurement). Batch size does not change
the graph, so a small one keeps the CPU compile short.
"""

from __future__ import annotations

import argparse
import collections
import re

import jax
import jax.numpy as jnp

from bench.common import default_run, emit, fast_attention
from tuner.core import steps
from tuner.core.loop import Run

_OP = re.compile(r"= \S+ ([a-z][\w\-]*)\(")  # "%x = f32[..]{..} fusion(" -> fusion
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}  # no kernel


def count_ops(hlo_text: str) -> dict[str, int]:
    """Ops by name in the ENTRY computation of compiled HLO (what the program launches, one step
    per dispatch so the scan is inlined): each ``fusion`` is one fused kernel, the rest unfused
    ops (dots, custom calls, copies, whiles of the CPU's RNG...); free ops are left out."""
    counts: collections.Counter[str] = collections.Counter()
    in_entry = False
    for line in hlo_text.splitlines():
        if not line.startswith(" "):
            in_entry = line.startswith("ENTRY")
            continue
        m = _OP.search(line.split(", metadata=")[0]) if in_entry else None
        if m and m.group(1) not in _FREE:
            counts[m.group(1)] += 1
    return dict(counts)


def compiled_text(fn, *args, **kwargs) -> str:
    return fn.lower(*args, **kwargs).compile().as_text()


def measure(optimizer: str, batch: int, patch: int) -> dict:
    run = Run(default_run(**{"train.batch_size": batch, "train.optimizer": optimizer,
                             "model.compute_dtype": "bfloat16", "model.patch_size": patch,
                             "model.attention_impl": fast_attention()}))
    state = run.init_state()
    step_ops = count_ops(compiled_text(steps.train_steps, state, run.task, run.hparams,
                                       spec=run.spec, n_steps=1))
    opt = run.spec.optimizer_impl()
    grads = jax.tree.map(jnp.ones_like, state.params)
    opt_ops = count_ops(compiled_text(jax.jit(opt.apply), grads, state.opt_state, state.params,
                                      jnp.float32(-1e-3), jnp.float32(0.01)))
    return {"optimizer": optimizer, "param_leaves": len(jax.tree.leaves(state.params)),
            "step_fusions": step_ops.get("fusion", 0), "step_ops": sum(step_ops.values()),
            "optimizer_fusions": opt_ops.get("fusion", 0),
            "optimizer_ops": sum(opt_ops.values()), "optimizer_by_op": opt_ops}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--optimizers", nargs="+", default=["adamw", "adamw_flat"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--patch", type=int, default=1)
    a = p.parse_args()
    for name in a.optimizers:
        emit(bench="hlo_count", backend=jax.default_backend(), batch=a.batch, patch=a.patch,
             **measure(name, a.batch, a.patch))


if __name__ == "__main__":
    main()
