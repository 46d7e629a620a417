"""Several trials on one GPU (Ray fractional GPUs): size JAX's memory pool to the trial's share.

JAX preallocates 75% of the GPU by default, so a second process on the same GPU runs out of
memory. Setting the fraction from the trial's share (before JAX initializes its backend) lets
1/share trials live side by side. Environment variables only: no JAX import here.
"""

from __future__ import annotations

import os

HEADROOM = 0.95  # leave room for CUDA contexts and cuDNN workspaces


def configure(gpu_fraction: float) -> None:
    """Caps this process's JAX GPU pool at ``gpu_fraction`` of the device (0 < f <= 1)."""
    if not 0 < gpu_fraction <= 1:
        raise ValueError(f"gpu_fraction={gpu_fraction} must be in (0, 1]")
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{HEADROOM * gpu_fraction:.3f}"
