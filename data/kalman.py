"""The Kalman filter (KF): the exact optimal predictor of an LDS, and its expected errors.

The KF's error covariance does not depend on the data, so every expected error here is exact,
computed in float64 on the host from the Riccati recursion (SPEC section 2, R = 0):

    P_{1|0} = sigma^2 I
    S_t = C P_{t|t-1} C^T,   K_t = P_{t|t-1} C^T S_t^-1
    P_{t|t} = P_{t|t-1} - K_t C P_{t|t-1},   P_{t+1|t} = A P_{t|t} A^T + sigma^2 I

Indexing follows the data: position t (0-based) of a sequence holds y_{t+1}; its one-step error is
that of predicting y_{t+1} from y_1..y_t, i.e. trace(C P_{t+1|t} C^T).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np


class _HasSystem(Protocol):
    A: object
    C: object
    sigma: object


def _as_np(system: _HasSystem) -> tuple[np.ndarray, np.ndarray, float]:
    return (np.asarray(system.A, np.float64), np.asarray(system.C, np.float64),
            float(np.asarray(system.sigma)))


def _propagate(a: np.ndarray, p: np.ndarray, q: float) -> np.ndarray:
    """One prediction step of the covariance: A P A^T + sigma^2 I."""
    return a @ p @ a.T + q * np.eye(a.shape[0])


def _update(c: np.ndarray, p_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measurement update with R = 0; returns (P_{t|t}, gain K_t)."""
    s = c @ p_pred @ c.T
    gain = np.linalg.solve(s, c @ p_pred).T  # P C^T S^-1 (S symmetric)
    p_filt = p_pred - gain @ c @ p_pred
    return 0.5 * (p_filt + p_filt.T), gain


def predicted_covariances(system: _HasSystem, seq_len: int) -> np.ndarray:
    """P_{t+1|t} for t = 0..seq_len-1 (index t: covariance of x_{t+1} given y_1..y_t), (T, X, X)."""
    a, c, sigma = _as_np(system)
    q = sigma**2
    p = q * np.eye(a.shape[0])
    out = np.empty((seq_len, *a.shape))
    for t in range(seq_len):
        out[t] = p
        p_filt, _ = _update(c, p)
        p = _propagate(a, p_filt, q)
    return out


def _trace_c(c: np.ndarray, p: np.ndarray) -> np.ndarray:
    """trace(C P C^T) over a leading batch of covariances."""
    return np.einsum("yi,...ij,yj->...", c, p, c)


def one_step_mse(system: _HasSystem, seq_len: int) -> np.ndarray:
    """Expected squared error (summed over Y) of the KF predicting ``y[:, t]`` from ``y[:, :t]``."""
    _, c, _ = _as_np(system)
    return _trace_c(c, predicted_covariances(system, seq_len))


def h_step_mse(system: _HasSystem, warmup: int, horizons: Iterable[int]) -> dict[int, float]:
    """Expected error of predicting y_{warmup+h} from y_1..y_warmup, for each h in ``horizons``."""
    a, c, sigma = _as_np(system)
    horizons = sorted(set(int(h) for h in horizons))
    if not horizons or horizons[0] < 1:
        raise ValueError(f"horizons must be >= 1, got {horizons}")
    p = predicted_covariances(system, warmup + 1)[warmup]  # P_{w+1|w}
    out: dict[int, float] = {}
    for h in range(1, horizons[-1] + 1):
        if h in horizons:
            out[h] = float(_trace_c(c, p))
        p = _propagate(a, p, sigma**2)
    return out


def patched_mse(system: _HasSystem, seq_len: int, patch_size: int) -> np.ndarray:
    """Per-position KF error given the information a patch model has.

    A model with patch size P predicts the whole patch k+1 from patches <= k, so position t is
    predicted from the first ``(t // P) * P`` observations: a (t mod P + 1)-step prediction. This is
    the fair optimum for patched models; with P = 1 it equals :func:`one_step_mse`.
    """
    a, c, sigma = _as_np(system)
    p_pred = predicted_covariances(system, seq_len)
    out = np.empty(seq_len)
    for t in range(seq_len):
        cut = (t // patch_size) * patch_size
        p = p_pred[cut]
        for _ in range(t - cut):
            p = _propagate(a, p, sigma**2)
        out[t] = _trace_c(c, p)
    return out


def zero_mse(system: _HasSystem, seq_len: int) -> np.ndarray:
    """Expected error of predicting 0 (the stationary mean) at each position: E|y_{t+1}|^2."""
    a, c, sigma = _as_np(system)
    cov = sigma**2 * np.eye(a.shape[0])  # Cov(x_1)
    out = np.empty(seq_len)
    for t in range(seq_len):
        out[t] = _trace_c(c, cov)
        cov = _propagate(a, cov, sigma**2)
    return out


def predict(system: _HasSystem, y_BxTxY: np.ndarray) -> np.ndarray:
    """KF predictions ``yhat[:, t] = E[y_{t+1} | y_1..y_t]`` for given sequences (float64).

    Used for plots and for the Monte-Carlo check that the filter attains :func:`one_step_mse`.
    """
    a, c, sigma = _as_np(system)
    y = np.asarray(y_BxTxY, np.float64)
    batch, seq_len, _ = y.shape
    q = sigma**2
    p = q * np.eye(a.shape[0])
    x_pred = np.zeros((batch, a.shape[0]))  # E[x_{t+1} | y_1..y_t]
    yhat = np.empty_like(y)
    for t in range(seq_len):
        yhat[:, t] = x_pred @ c.T
        p_filt, gain = _update(c, p)
        x_filt = x_pred + (y[:, t] - yhat[:, t]) @ gain.T
        x_pred = x_filt @ a.T
        p = _propagate(a, p_filt, q)
    return yhat
