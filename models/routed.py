"""Routed MLP (grokking study): each layer's computation goes through H parallel MLP heads,
mixed per example by a learned gate.

Shapes in names: B batch, L positions, D d_model, F d_ff, H ``n_routes`` (heads).

Layer i: ``x = norm(h)``; gate ``g = softmax(W_g x)`` over the H heads (with ``route_top_k`` =
k < H only the k largest gates are kept and renormalised, the others are exactly 0, so an example
runs through k heads); ``h <- h + sum_h g_h MLP_h(x)``. The full softmax (before top-k) of every
layer is sown as ``intermediates/<layer>/gate`` (B, L, H), so the routing regularizers
(:mod:`tuner.core.routing`) and metrics read it by applying with ``mutable=["intermediates"]``;
a plain ``apply`` drops it.

The heads are one batched einsum over stacked (H, D, F) and (H, F, D) kernels, not H modules:
one matmul per layer however many heads.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.block import make_norm
from models.config import ModelConfig

GATE = "gate"  # name of the sown gate probabilities (collection "intermediates")


def top_k_gates(probs_BxLxH: jax.Array, k: int) -> jax.Array:
    """The k largest gates of each example renormalised to sum 1, the rest 0 (k = 0 or k >= H:
    the softmax as it is). Gradients flow through the kept gates."""
    h = probs_BxLxH.shape[-1]
    if k <= 0 or k >= h:
        return probs_BxLxH
    kth = jax.lax.top_k(probs_BxLxH, k)[0][..., -1:]
    kept = jnp.where(probs_BxLxH >= kth, probs_BxLxH, 0.0)
    return kept / jnp.sum(kept, -1, keepdims=True)


class RoutedMLP(nn.Module):
    """One routed layer's branch: gate, H GELU MLP heads, gate-weighted sum, (B, L, D)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        c = self.cfg
        h, d, f = c.n_routes, c.d_model, c.d_ff
        # float32 gate: the regularizers take its log
        logits_BxLxH = nn.Dense(h, dtype=jnp.float32, name="router")(x_BxLxD.astype(jnp.float32))
        probs_BxLxH = jax.nn.softmax(logits_BxLxH, -1)
        self.sow("intermediates", GATE, probs_BxLxH)
        gates_BxLxH = top_k_gates(probs_BxLxH, c.route_top_k)
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        w_in_HxDxF = self.param("w_in", init, (h, d, f))
        b_in_HxF = self.param("b_in", nn.initializers.zeros, (h, f))
        out_init = nn.initializers.zeros if c.zero_init_out else init
        w_out_HxFxD = self.param("w_out", out_init, (h, f, d))
        x = x_BxLxD.astype(c.dtype)
        a_BxLxHxF = nn.gelu(jnp.einsum("bld,hdf->blhf", x, w_in_HxDxF.astype(c.dtype))
                            + b_in_HxF.astype(c.dtype))
        y_BxLxHxD = jnp.einsum("blhf,hfd->blhd", a_BxLxHxF, w_out_HxFxD.astype(c.dtype))
        return jnp.einsum("blhd,blh->bld", y_BxLxHxD, gates_BxLxH.astype(c.dtype))


class RoutedBackbone(nn.Module):
    """``n_layers`` pre-norm residual routed layers, position-wise (no mixing across positions,
    like the ``mlp`` backbone it generalises: H = 1 is a GELU MLP block with a constant gate)."""

    cfg: ModelConfig
    SOWS_GATES = True  # the routing regularizers and metrics apply (tuner.core.routing)

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array, caches=None):
        c = self.cfg
        for i in range(c.n_layers):
            norm = make_norm(c.norm, f"ln_{i}")
            x = h_BxLxD if norm is None else norm(h_BxLxD)
            h_BxLxD = h_BxLxD + RoutedMLP(c, name=f"routed_{i}")(x).astype(h_BxLxD.dtype)
        return h_BxLxD, caches

    def cache_shape(self, batch: int, slots: int) -> tuple:
        return ()


def gates_of(intermediates) -> list[jax.Array]:
    """Every layer's sown gate probabilities, (B, L, H) each, from ``apply(...,
    mutable=["intermediates"])``'s state (any nesting)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(
            intermediates, is_leaf=lambda x: isinstance(x, tuple))[0]:
        if any(getattr(k, "key", None) == GATE for k in path):
            out.extend(leaf if isinstance(leaf, tuple) else (leaf,))
    return out
