"""Backbones: the sequence mixer between the input layer and the head."""

from __future__ import annotations

import flax.linen as nn
import jax

from models.config import ModelConfig
from models.layers import Block, KVCache


class Transformer(nn.Module):
    """A stack of pre-LN causal RoPE blocks; threads one KVCache per layer when given."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array,
                 caches: tuple[KVCache, ...] | None = None
                 ) -> tuple[jax.Array, tuple[KVCache, ...] | None]:
        c = self.cfg
        h_BxLxD = h_BxLxD.astype(c.dtype)
        new_caches = []
        for i in range(c.n_layers):
            h_BxLxD, cache = Block(c.d_model, c.n_heads, c.d_ff, c.dtype, c.attention_impl,
                                   name=f"block_{i}")(h_BxLxD, positions_L,
                                                      None if caches is None else caches[i])
            new_caches.append(cache)
        return h_BxLxD, (None if caches is None else tuple(new_caches))

    def cache_shape(self, batch: int, slots: int) -> tuple[KVCache, ...]:
        c = self.cfg
        return tuple(KVCache.zeros(batch, slots, c.n_heads, c.d_model // c.n_heads, c.dtype)
                     for _ in range(c.n_layers))
