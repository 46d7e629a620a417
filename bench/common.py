"""Shared helpers for the benchmarks: the default model's run config and a timer."""

from __future__ import annotations

import json
import time

import jax

from tuner.core.config import RunConfig, replace


def default_run(**overrides) -> RunConfig:
    """SPEC defaults (4 layers, d_model 256, 4 heads, T 256, dim_y 2, patch 1) plus overrides."""
    return replace(RunConfig(), **{"train.steps": 10**6, **overrides})


def fast_attention() -> str | None:
    """cuDNN flash attention on a GPU (what the experiments use there), JAX's choice elsewhere."""
    return "cudnn" if jax.default_backend() == "gpu" else None


def timed(fn, *args, **kwargs):
    """(result, seconds) with the result's device work finished."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start


def emit(**figures) -> None:
    """One JSON line per measurement, with the device it ran on."""
    print(json.dumps({"device": jax.devices()[0].device_kind, **figures}), flush=True)
