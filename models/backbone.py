"""Backbones: the sequence mixer between the input layer and the head (models.registry names them).

Shapes in names: B batch, L tokens in this call, D d_model.

The three transformers are one stack of models.block.Block and differ only in their
:class:`~models.block.BlockSpec`:

- ``transformer`` (the LDS model): softmax attention with RoPE, GELU MLP, LayerNorm; fused
  ``qkv`` parameters.
- ``toy``: attention kind, MLP kind, norm and RoPE from the config (``model.attention`` etc.).
- ``gpt``: softmax attention without RoPE (positions are learned by the "tokens" input, see
  ``model.pos_embedding``), GELU MLP, LayerNorm.

All take ``cfg.dropout`` (embeddings and residual branches, training only) and
``cfg.zero_init_out``. ``mlp`` is position-wise residual MLP blocks, no mixing across positions.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from models.attention import KVCache
from models.block import MLPS, Block, BlockSpec, make_norm
from models.config import ModelConfig


class BlockStack(nn.Module):
    """Embedding dropout, then ``n_layers`` Blocks of ``block_spec()``, one KVCache per layer
    threaded through when given (prefill and decoding) and None otherwise."""

    cfg: ModelConfig

    def block_spec(self) -> BlockSpec:
        raise NotImplementedError

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array,
                 caches: tuple[KVCache, ...] | None = None
                 ) -> tuple[jax.Array, tuple[KVCache, ...] | None]:
        c, spec = self.cfg, self.block_spec()
        h_BxLxD = nn.Dropout(c.dropout, deterministic=not self.has_rng("dropout"))(h_BxLxD)
        new_caches = []
        for i in range(c.n_layers):
            h_BxLxD, cache = Block(c, spec, name=f"block_{i}")(
                h_BxLxD.astype(c.dtype), positions_L, None if caches is None else caches[i])
            new_caches.append(cache)
        return h_BxLxD, (None if caches is None else tuple(new_caches))

    def cache_shape(self, batch: int, slots: int) -> tuple[KVCache, ...]:
        c = self.cfg
        return tuple(KVCache.zeros(batch, slots, c.n_heads, c.d_model // c.n_heads, c.dtype)
                     for _ in range(c.n_layers))


class Transformer(BlockStack):
    """The LDS model's backbone: pre-LN causal RoPE blocks with softmax attention, GELU MLP."""

    def block_spec(self) -> BlockSpec:
        return BlockSpec(attention="softmax", mlp="gelu", norm="layernorm", rope=True, qkv="fused")


class ToyTransformer(BlockStack):
    """Interpretable toy transformers: every block choice from the config (quadratic attention,
    bilinear or no MLP, RMSNorm or no norm, RoPE or not)."""

    def block_spec(self) -> BlockSpec:
        c = self.cfg
        return BlockSpec(attention=c.attention, mlp=c.mlp, norm=c.norm, rope=c.rope, qkv="split")


class GPT(BlockStack):
    """GPT-2-style blocks: softmax attention, GELU MLP, LayerNorm, no RoPE."""

    def block_spec(self) -> BlockSpec:
        return BlockSpec(attention="softmax", mlp="gelu", norm="layernorm", rope=False,
                         qkv="split")


class MLPBackbone(nn.Module):
    """Position-wise residual MLP blocks, no mixing across positions (the grokking baseline).

    ``mlp="none"`` would leave nothing to learn, so it means GELU here.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array, caches=None):
        c = self.cfg
        mlp = c.mlp if c.mlp != "none" else "gelu"
        for i in range(c.n_layers):
            norm = make_norm(c.norm, f"ln_{i}")
            x = h_BxLxD if norm is None else norm(h_BxLxD)
            h_BxLxD = h_BxLxD + MLPS[mlp](c, name=f"mlp_{i}")(x.astype(c.dtype)).astype(
                h_BxLxD.dtype)
        return h_BxLxD, caches

    def cache_shape(self, batch: int, slots: int) -> tuple:
        return ()
