"""AdamW over one flat vector of all parameters: the ``adamw_flat`` optimizer.

Per leaf, a step's optimizer work is a norm reduction, moment updates and a parameter update
for each of the model's ~50 leaves: many small kernels (bench/README.md, "Why batch 64 stops").
Here gradients and parameters are concatenated once into one vector (a static layout from the
tree's shapes), the global norm is one reduction, clip + Adam moments + bias correction +
decoupled masked decay one elementwise pass, and the new parameters are sliced back into the
model's tree. The moments live flat in the state, so they are never split or re-joined.

Numerics are optax's own (``clip_by_global_norm`` + ``scale_by_adam``, the same moment and
bias-correction functions applied to the flat vector) followed by the trainer's update
``p + scale * (u + wd * mask * p)``; the one difference to :func:`tuner.core.optimizers.adamw`
is the summation order of the global norm (one sum instead of a sum of per-leaf sums), a float32
rounding difference (``tests/test_flat_optimizer.py`` states the tolerance).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tuner.core.optimizer_base import Optimizer, decay_mask

EPS = 1e-8  # optax.scale_by_adam's default eps (eps_root 0)


class FlatAdamState(NamedTuple):
    """Adam's step count and moments, each moment one vector over all parameters (tree order)."""

    count: jax.Array  # () int32
    mu: jax.Array  # (N,) float32
    nu: jax.Array  # (N,) float32


def ravel(tree: Any) -> jax.Array:
    """The leaves of ``tree`` concatenated in tree order; all must share one dtype (a mixed tree
    would be promoted silently, changing the update's precision)."""
    leaves = jax.tree.leaves(tree)
    dtypes = {x.dtype for x in leaves}
    if len(dtypes) != 1:
        raise ValueError("adamw_flat needs parameters of one dtype, got "
                         f"{sorted(map(str, dtypes))}")
    return jnp.concatenate([jnp.ravel(x) for x in leaves])


def unravel(flat: jax.Array, like: Any) -> Any:
    """Inverse of :func:`ravel`: ``flat`` sliced into leaves shaped like ``like``'s."""
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for x in leaves:
        out.append(jax.lax.slice_in_dim(flat, start, start + x.size).reshape(x.shape))
        start += x.size
    return jax.tree.unflatten(treedef, out)


def decay_vector(params: Any, weight_decay: jax.Array) -> jax.Array:
    """``weight_decay`` where :func:`tuner.core.optimizer_base.decay_mask` decays, 0 elsewhere,
    as one vector; built from broadcasts (no (N,) constant in the program), traced
    ``weight_decay``."""
    masks = jax.tree.leaves(decay_mask(params))
    wd = jnp.asarray(weight_decay, jnp.float32)
    return jnp.concatenate([jnp.broadcast_to(jnp.where(m, wd, 0.0), (x.size,))
                            for m, x in zip(masks, jax.tree.leaves(params), strict=True)])


def optimizer(b1: float, b2: float, clip_norm: float) -> Optimizer:
    """Global-norm clip + Adam(``b1``, ``b2``) + decoupled masked decay, all on one vector."""

    def init(params) -> FlatAdamState:
        zeros = jnp.zeros_like(ravel(params))
        return FlatAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def apply(grads, state: FlatAdamState, params, scale, weight_decay):
        g = ravel(grads)
        g_norm = jnp.sqrt(jnp.sum(jnp.square(g)))
        # optax.clip_by_global_norm's select, same expression
        g = jax.lax.select(g_norm < clip_norm, g, (g / g_norm.astype(g.dtype)) * clip_norm)
        mu = optax.tree.update_moment(g, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(g, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        u = mu_hat / (jnp.sqrt(nu_hat) + EPS)
        p = ravel(params)
        p = p + scale * (u + decay_vector(params, weight_decay) * p)
        return unravel(p, params), FlatAdamState(count, mu, nu), g_norm

    return Optimizer(init, apply)
