"""SequenceModel = input layer + backbone + head (SPEC section 4), with KV-cache generation.

The model maps observations y_BxTxY to predictions yhat_BxTxY where ``yhat[:, t]`` predicts
``y[:, t]`` from ``y[:, :(t // P) * P]`` only: every position is predicted exactly once, and
position 0 (y_1) from nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import registry
from models.attention import KVCache
from models.config import ModelConfig


class DecodeState(NamedTuple):
    """Everything generation carries between steps: per-layer KV caches, input statistics, and
    the position of the next token."""

    caches: tuple[KVCache, ...]
    input_carry: object
    position: jax.Array  # () int32


class SequenceModel(nn.Module):
    cfg: ModelConfig
    dim_y: int

    def setup(self) -> None:
        self.inputs = registry.INPUT_LAYERS[self.cfg.input_layer](self.cfg, self.dim_y)
        self.backbone = registry.BACKBONES[self.cfg.backbone](self.cfg)
        self.head = registry.HEADS[self.cfg.head](self.cfg, self.dim_y)

    def __call__(self, y_BxTxY: jax.Array) -> jax.Array:
        h_BxNxD, stats = self.inputs(y_BxTxY)
        h_BxNxD, _ = self.backbone(h_BxNxD, jnp.arange(h_BxNxD.shape[1]))
        return self.head(h_BxNxD, stats)

    # the forward pass in its parts, for the diagnostics (tuner.core.diagnostics): derivatives
    # with respect to the input representation, and the last hidden representation
    def embed(self, y_BxTxY: jax.Array) -> tuple[jax.Array, object]:
        """The input layer's tokens (B, N, D) and what the head needs from it."""
        return self.inputs(y_BxTxY)

    def from_embedding(self, h_BxNxD: jax.Array, stats) -> jax.Array:
        """Backbone and head on :meth:`embed`'s output: ``__call__`` = this after embed."""
        h_BxNxD, _ = self.backbone(h_BxNxD, jnp.arange(h_BxNxD.shape[1]))
        return self.head(h_BxNxD, stats)

    def features(self, y_BxTxY: jax.Array) -> jax.Array:
        """The backbone's output (B, N, D): the last hidden representation before the head."""
        h_BxNxD, _ = self.inputs(y_BxTxY)
        return self.backbone(h_BxNxD, jnp.arange(h_BxNxD.shape[1]))[0]

    def prefill(self, y_BxWxY: jax.Array, slots: int) -> tuple[jax.Array, DecodeState]:
        """Reads a warmup of W observations (W a multiple of P) into a cache of ``slots`` tokens.

        Returns the prediction of the next patch, (B, P, Y), and the decoding state.
        """
        b, _, y = y_BxWxY.shape
        p = self.cfg.patch_size
        padded = jnp.concatenate([y_BxWxY, jnp.zeros((b, p, y), y_BxWxY.dtype)], 1)
        h_BxNxD, stats = self.inputs(padded)  # tokens [zero, p_1, ..., p_{W/P}]
        n = h_BxNxD.shape[1]
        caches = self.backbone.cache_shape(b, slots)
        h_BxNxD, caches = self.backbone(h_BxNxD, jnp.arange(n), caches)
        pred = self.head(h_BxNxD[:, -1:], jax.tree.map(lambda s: s[:, -1:], stats))
        state = DecodeState(caches, self.inputs.carry_after(y_BxWxY), jnp.asarray(n, jnp.int32))
        return pred, state

    def decode(self, patch_BxPxY: jax.Array, state: DecodeState
               ) -> tuple[jax.Array, DecodeState]:
        """Feeds one patch (e.g. its own prediction); returns the next patch's prediction."""
        h_Bx1xD, stats, carry = self.inputs.step(patch_BxPxY[:, None], state.input_carry)
        h_Bx1xD, caches = self.backbone(h_Bx1xD, state.position[None], state.caches)
        return self.head(h_Bx1xD, stats), DecodeState(caches, carry, state.position + 1)

    @nn.nowrap
    def generate(self, params, y_warm_BxWxY: jax.Array, n_steps: int) -> jax.Array:
        """:func:`generate` through the model object, for callers handed a model that should not
        need to import models/ to roll it out (outside ``apply``; not a Flax method)."""
        return generate(self, params, y_warm_BxWxY, n_steps)


def generate(model: SequenceModel, params, y_warm_BxWxY: jax.Array, n_steps: int) -> jax.Array:
    """Autoregressive rollout: warmup, then ``n_steps`` observations fed back from the model.

    ``n_steps`` must be a multiple of P. Returns the generated observations, (B, n_steps, Y).
    Pure; jit it with ``n_steps`` static.
    """
    p = model.cfg.patch_size
    if n_steps % p or y_warm_BxWxY.shape[1] % p:
        raise ValueError(f"warmup ({y_warm_BxWxY.shape[1]}) and n_steps ({n_steps}) must be "
                         f"multiples of patch_size={p}")
    n_patches = n_steps // p
    slots = y_warm_BxWxY.shape[1] // p + n_patches
    pred, state = model.apply(params, y_warm_BxWxY, slots, method=SequenceModel.prefill)

    def step(carry, _):
        pred, state = carry
        nxt, state = model.apply(params, pred, state, method=SequenceModel.decode)
        return (nxt, state), pred

    (_, _), preds_NxBxPxY = jax.lax.scan(step, (pred, state), None, length=n_patches)
    b, y = y_warm_BxWxY.shape[0], y_warm_BxWxY.shape[2]
    return jnp.moveaxis(preds_NxBxPxY, 0, 1).reshape(b, n_steps, y)
