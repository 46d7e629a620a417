"""Cross-entropy and accuracy of logits against integer targets: shared by the token tasks.

Computed in float32 (or the logits' wider dtype) from log-softmax, so a loss of ~1e-7 (a
memorised modular-arithmetic training set) is resolved rather than rounded to 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits_BxLxV: jax.Array, y_BxL: jax.Array) -> jax.Array:
    """Per-token cross-entropy in nats, (B, L)."""
    logits = logits_BxLxV.astype(jnp.promote_types(logits_BxLxV.dtype, jnp.float32))
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, y_BxL[..., None].astype(jnp.int32), axis=-1)[..., 0]


def correct(logits_BxLxV: jax.Array, y_BxL: jax.Array) -> jax.Array:
    """1.0 where the arg-max prediction is the target, (B, L)."""
    return (jnp.argmax(logits_BxLxV, axis=-1) == y_BxL).astype(jnp.float32)
