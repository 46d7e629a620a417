"""Several trials on one GPU (Ray fractional GPUs): size JAX's memory pool to the trial's share.

JAX preallocates 75% of the GPU by default, so a second process on the same GPU runs out of
memory. Setting the fraction from the trial's share (before JAX initializes its backend) lets
1/share trials live side by side. Environment variables only: no JAX import here.

It also turns off XLA's Triton GEMM emitter (cuBLAS takes every matmul): it compiles the
default model's step in less than half the time and runs it slightly faster (bench/README.md).
A flag the caller already put in ``XLA_FLAGS`` wins.
"""

from __future__ import annotations

import os

HEADROOM = 0.95  # leave room for CUDA contexts and cuDNN workspaces
XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false",)


def configure(gpu_fraction: float) -> None:
    """Caps this process's JAX GPU pool at ``gpu_fraction`` of the device (0 < f <= 1) and adds
    :data:`XLA_FLAGS`; call before JAX initializes its backend (the first computation)."""
    if not 0 < gpu_fraction <= 1:
        raise ValueError(f"gpu_fraction={gpu_fraction} must be in (0, 1]")
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{HEADROOM * gpu_fraction:.3f}"
    flags = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in flags}
    flags += [f for f in XLA_FLAGS if f.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(flags)
