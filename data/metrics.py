"""Metrics against the optimal baseline (SPEC section 2): nmse and skill, per position and averaged.

Averages are ratios of errors summed over the same positions (not means of per-position ratios),
so a few positions with tiny KF error cannot dominate. Position 0 (y_1, predicted from nothing)
is excluded by default: the SPEC scores y_2..y_T.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FIRST_SCORED = 1  # y_1 is predicted from nothing; scoring starts at y_2


def per_position_error(pred_BxTxY: jax.Array, y_BxTxY: jax.Array) -> jax.Array:
    """Squared error summed over Y, averaged over the batch: (T,)."""
    diff = pred_BxTxY.astype(jnp.float32) - y_BxTxY.astype(jnp.float32)
    return jnp.mean(jnp.sum(diff**2, -1), 0)


def nmse(err_T, kf_T, start: int = FIRST_SCORED):
    """Model error / KF error over positions ``start:``; the KF scores 1, lower is impossible."""
    return err_T[start:].sum() / kf_T[start:].sum()


def skill(err_T, zero_T, kf_T, start: int = FIRST_SCORED):
    """Share of the learnable gap closed: (E_zero - E_model) / (E_zero - E_KF); KF 1, zero 0."""
    e_zero, e_kf = zero_T[start:].sum(), kf_T[start:].sum()
    return (e_zero - err_T[start:].sum()) / (e_zero - e_kf)
