"""What both speed anchors share, in NumPy only (the torch anchor must not import JAX: JAX's
first device query would take 75% of the GPU's memory): the SPEC model's sizes, a pool of LDS
batches sampled on the host, the per-position loss weights, and the JSON line.

The anchors train on a fixed pool of batches (indexed by step) instead of sampling on device as
``bench.train_step`` does; the sampler is ~3% of our step (bench/README.md, "Sampler share").
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spec:
    """The SPEC model and data sizes (tuner.core.config defaults, search_spaces/h200.yaml)."""

    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    seq_len: int = 256
    dim_x: int = 64
    dim_y: int = 2
    patch: int = 1
    lambda_val: float = 0.9
    lr: float = 1e-3
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0
    eps: float = 1e-5  # RevIN's (models/inputs.py)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def small_spec(**overrides) -> Spec:
    """A tiny model for checking an anchor runs on a CPU."""
    return dataclasses.replace(Spec(n_layers=1, d_model=32, n_heads=2, d_ff=64, seq_len=32,
                                    dim_x=4), **overrides)


def lds_pool(spec: Spec, batch: int, n_batches: int, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """``n_batches`` batches of observations (n, B, T, Y) float32 from one stable LDS
    (x_{t+1} = A x_t + e_t, y = C x_{t+1}, A = lambda * orthogonal), and loss weights (T,) =
    1 / the zero predictor's error per position (the shape of the KF-normalized loss)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((spec.dim_x, spec.dim_x)))
    a = spec.lambda_val * q
    c = rng.standard_normal((spec.dim_y, spec.dim_x)) / np.sqrt(spec.dim_y)
    n = n_batches * batch
    x = np.zeros((n, spec.dim_x))
    y = np.empty((n, spec.seq_len, spec.dim_y))
    for t in range(spec.seq_len):
        x = x @ a.T + rng.standard_normal((n, spec.dim_x))
        y[:, t] = x @ c.T
    zero_err_t = np.mean(np.sum(y**2, -1), 0)
    return (y.reshape(n_batches, batch, spec.seq_len, spec.dim_y).astype(np.float32),
            (1.0 / zero_err_t).astype(np.float32))


def emit(device: str, **figures) -> None:
    """One JSON line, as bench.common.emit writes it."""
    print(json.dumps({"device": device, **figures}), flush=True)
