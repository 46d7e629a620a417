"""The linear dynamical system (LDS) task: system generation and sampling (SPEC section 1).

    x_0 = 0,  x_{t+1} = A x_t + e_t,  e_t ~ N(0, sigma^2 I),  y_t = C x_t  (no observation noise)

Shapes in names: B batch, T sequence length, X state dim (``dim_x``), Y observation dim (``dim_y``).

Conventions:
- Eigenvalues of A come in complex pairs ``r e^{+-i th}`` with ``r ~ U[lambda/2, lambda]`` and
  ``th ~ U[0, pi]`` (plus one real eigenvalue ``+-r`` when ``dim_x`` is odd). ``diagonal`` puts them
  in 2x2 rotation blocks; ``dense`` applies a random similarity ``A = S D S^-1`` to the very same
  block matrix D (same seed, same lambda -> same spectrum), with S = Q1 diag(s) Q2, Q orthogonal
  and s in [1, 2], so cond(S) <= 2. S comes from its own random stream (seeded by
  ``(system_seed, SIMILARITY_STREAM)``), so it does not depend on the shape of C: at one
  (seed, lambda) the dense A is the same for every ``dim_y`` (experiment 4 compares dim_y
  on one A).
- C is Gaussian with fan_out normalization: ``C_ij ~ N(0, 1 / dim_y)``, fan_out being the output
  dimension of the map x -> C x.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Structure = Literal["dense", "diagonal", "scalar"]
STRUCTURES: tuple[str, ...] = ("dense", "diagonal", "scalar")
SIMILARITY_STREAM = 1  # second entropy word of the dense similarity's stream (the first: seed)


@dataclasses.dataclass(frozen=True)
class LDSConfig:
    """One LDS task. Invalid values fail here, before any training or cluster work starts."""

    dim_x: int = 64  # state dimension X
    dim_y: int = 2  # observation dimension Y (<= dim_x: keeps the KF's C P C^T invertible)
    seq_len: int = 256  # T, observations per sequence
    sigma: float = 1.0  # process-noise standard deviation
    lambda_val: float = 0.9  # largest eigenvalue modulus; moduli are drawn in [lambda/2, lambda]
    structure: Structure = "dense"  # dense | diagonal | scalar
    system_seed: int = 0  # picks the (A, C) of the run; fixed for the whole run

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(
                f"LDSConfig.structure={self.structure!r}; allowed: {list(STRUCTURES)}"
            )
        if not 0.0 < self.lambda_val < 1.0:
            raise ValueError(
                f"LDSConfig.lambda_val={self.lambda_val} must lie in the open interval (0, 1) "
                "(a stable system)"
            )
        if self.dim_x < 1:
            raise ValueError(f"LDSConfig.dim_x={self.dim_x} must be >= 1")
        if not 1 <= self.dim_y <= self.dim_x:
            raise ValueError(
                f"LDSConfig.dim_y={self.dim_y} must be in [1, dim_x={self.dim_x}] "
                "(dim_y > dim_x makes C P C^T singular)"
            )
        if self.seq_len < 2:
            raise ValueError(f"LDSConfig.seq_len={self.seq_len} must be >= 2")
        if not self.sigma > 0:
            raise ValueError(f"LDSConfig.sigma={self.sigma} must be > 0")


class System(NamedTuple):
    """A concrete LDS. A pytree of arrays, so it can be passed into jitted functions."""

    A: jax.Array  # (X, X) state transition
    C: jax.Array  # (Y, X) observation matrix
    sigma: jax.Array  # () process-noise standard deviation


def _block_spectrum(rng: np.random.Generator, dim_x: int, lam: float) -> np.ndarray:
    """Real block-diagonal matrix D with 2x2 rotation blocks r R(th), r in [lam/2, lam]."""
    d = np.zeros((dim_x, dim_x))
    for i in range(0, dim_x - 1, 2):
        r = rng.uniform(lam / 2, lam)
        th = rng.uniform(0.0, np.pi)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        d[i : i + 2, i : i + 2] = r * rot
    if dim_x % 2:
        d[-1, -1] = rng.uniform(lam / 2, lam) * rng.choice([-1.0, 1.0])
    return d


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def similarity(cfg: LDSConfig) -> np.ndarray:
    """S of the dense structure (cond(S) <= 2), from a stream of its own: independent of C."""
    srng = np.random.default_rng((cfg.system_seed, SIMILARITY_STREAM))
    s = _orthogonal(srng, cfg.dim_x) @ np.diag(srng.uniform(1.0, 2.0, cfg.dim_x))
    return s @ _orthogonal(srng, cfg.dim_x)


def make_system_np(cfg: LDSConfig) -> tuple[np.ndarray, np.ndarray]:
    """(A, C) in float64 numpy: the exact system, also used by the Kalman baseline.

    The spectrum and C are drawn from the same stream for every structure, so dense and
    diagonal at one (seed, lambda) share eigenvalues and C; the dense similarity S has a stream
    of its own, so A does not change with ``dim_y``.
    """
    rng = np.random.default_rng(cfg.system_seed)
    d = _block_spectrum(rng, cfg.dim_x, cfg.lambda_val)
    c = rng.standard_normal((cfg.dim_y, cfg.dim_x)) / np.sqrt(cfg.dim_y)
    if cfg.structure == "scalar":
        a = cfg.lambda_val * np.eye(cfg.dim_x)
    elif cfg.structure == "diagonal":
        a = d
    else:
        s = similarity(cfg)
        a = s @ d @ np.linalg.inv(s)
    return a, c


def make_system(cfg: LDSConfig) -> System:
    """The run's system as float32 device arrays."""
    a, c = make_system_np(cfg)
    return System(A=jnp.asarray(a, jnp.float32), C=jnp.asarray(c, jnp.float32),
                  sigma=jnp.asarray(cfg.sigma, jnp.float32))


HIGHEST = jax.lax.Precision.HIGHEST  # full float32 (GPUs would otherwise use TF32 here)


def _noise(system: System, key: jax.Array, batch: int, seq_len: int) -> jax.Array:
    """e_0..e_{T-1}, (T, B, X): the one draw both samplers turn into observations."""
    dim_x = system.A.shape[0]
    return system.sigma * jax.random.normal(key, (seq_len, batch, dim_x), jnp.float32)


def sample(system: System, key: jax.Array, batch: int, seq_len: int) -> jax.Array:
    """Draws ``batch`` sequences on device; returns y_BxTxY with ``y[:, 0] = y_1 = C e_0``.

    The reference sampler: the recursion itself, one step at a time (``lax.scan``).
    """
    dim_x = system.A.shape[0]
    noise_TxBxX = _noise(system, key, batch, seq_len)

    def step(x_BxX: jax.Array, e_BxX: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_next = jnp.matmul(x_BxX, system.A.T, precision=HIGHEST) + e_BxX
        return x_next, jnp.matmul(x_next, system.C.T, precision=HIGHEST)

    _, y_TxBxY = jax.lax.scan(step, jnp.zeros((batch, dim_x), jnp.float32), noise_TxBxX)
    return jnp.swapaxes(y_TxBxY, 0, 1)


def impulse_response(system, seq_len: int) -> np.ndarray:
    """K_TxYxX with K[k] = C A^k (float64 on the host): y_{t+1} = sum_{s<=t} K[t-s] e_s."""
    a, c = np.asarray(system.A, np.float64), np.asarray(system.C, np.float64)
    out = np.empty((seq_len, *c.shape))
    power = np.eye(a.shape[0])
    for k in range(seq_len):
        out[k] = c @ power
        power = a @ power
    return out


def sample_parallel(system: System, impulse_TxYxX: jax.Array, key: jax.Array, batch: int
                    ) -> jax.Array:
    """Same draw as :func:`sample` (same key, same noise), computed as one causal convolution
    with the impulse response instead of T sequential steps: a single large matmul, which on a
    GPU replaces T tiny sequential kernels (what it saves: bench/README.md, "Sampler share")."""
    seq_len = impulse_TxYxX.shape[0]
    noise_TxBxX = _noise(system, key, batch, seq_len)
    lag_TxT = jnp.arange(seq_len)[:, None] - jnp.arange(seq_len)[None, :]  # t - s
    toeplitz_TxTxYxX = jnp.where((lag_TxT >= 0)[:, :, None, None],
                                 impulse_TxYxX[jnp.clip(lag_TxT, 0)], 0.0)
    return jnp.einsum("tsyx,sbx->bty", toeplitz_TxTxYxX, noise_TxBxX, precision=HIGHEST)
