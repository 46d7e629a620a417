"""Toy interpretable transformers: quadratic attention, bilinear MLPs, RMSNorm (SPEC section 7).

Shapes in names: B batch, L tokens in this call, S key slots (== L without a cache), D d_model,
H heads, K head dim, F MLP width.

- Quadratic attention: weights (q.k / K)^2 under the causal mask, no softmax, so a layer is a
  polynomial of its input (what makes these models tractable to analyse).
- Bilinear MLP: down((W x) * (V x)), no activation: a quadratic form per output.
- Attention-only models set ``mlp="none"``; ``norm`` may be "none" for a purely polynomial net.
- ``zero_init_out`` starts every residual branch at 0, so the network starts as the embedding
  read out directly (common for toy models studied with circuit analysis).

Every block takes an explicit KV cache like models.layers, so prefill + decoding equals the full
forward pass for both attention kinds.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.layers import KVCache, apply_rope
from models.tokens import make_norm


class RMSNorm(nn.Module):
    """x / rms(x) * scale, in float32 (no mean subtraction, no bias)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(jnp.float32)
        scale_D = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return x * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + self.eps) * scale_D


def _out_init(cfg: ModelConfig):
    return nn.initializers.zeros if cfg.zero_init_out else nn.initializers.lecun_normal()


def attention_weights(q_BxLxHxK: jax.Array, k_BxSxHxK: jax.Array, mask_LxS: jax.Array,
                      kind: str) -> jax.Array:
    """Attention weights (B, H, L, S): softmax(q.k / sqrt(K)) or (q.k / K)^2, causal."""
    head_dim = q_BxLxHxK.shape[-1]
    dots_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxSxHxK,
                              preferred_element_type=jnp.float32)
    if kind == "quadratic":
        return jnp.where(mask_LxS, (dots_BxHxLxS / head_dim) ** 2, 0.0)
    scores = jnp.where(mask_LxS, dots_BxHxLxS / jnp.sqrt(head_dim), -jnp.inf)
    return jax.nn.softmax(scores, axis=-1)


class Attention(nn.Module):
    """Causal multi-head attention (softmax or quadratic), optional RoPE, explicit KV cache."""

    cfg: ModelConfig
    kind: str  # softmax | quadratic
    rope: bool

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array,
                 cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        c = self.cfg
        b, length, _ = x_BxLxD.shape
        k_dim = c.d_model // c.n_heads
        proj = lambda name: nn.Dense(c.n_heads * k_dim, use_bias=False, dtype=c.dtype,  # noqa: E731
                                     name=name)(x_BxLxD).reshape(b, length, c.n_heads, k_dim)
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = proj("q"), proj("k"), proj("v")
        if self.rope:
            q_BxLxHxK = apply_rope(q_BxLxHxK, positions_L)
            k_BxLxHxK = apply_rope(k_BxLxHxK, positions_L)
        if cache is None:
            k_all, v_all, key_pos_S = k_BxLxHxK, v_BxLxHxK, positions_L
            new_cache = None
        else:
            new_cache = cache.write(k_BxLxHxK, v_BxLxHxK, positions_L[0])
            k_all, v_all = new_cache
            key_pos_S = jnp.arange(k_all.shape[1])
        mask_LxS = key_pos_S[None, :] <= positions_L[:, None]
        w_BxHxLxS = attention_weights(q_BxLxHxK, k_all, mask_LxS, self.kind)
        out_BxLxHxK = jnp.einsum("bhls,bshk->blhk", w_BxHxLxS, v_all.astype(jnp.float32))
        out = nn.Dense(c.d_model, use_bias=False, dtype=c.dtype, kernel_init=_out_init(c),
                       name="out")(out_BxLxHxK.reshape(b, length, -1).astype(c.dtype))
        return out, new_cache


class BilinearMLP(nn.Module):
    """down((W x) * (V x)): no activation, no biases."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        c = self.cfg
        w_BxLxF = nn.Dense(c.d_ff, use_bias=False, dtype=c.dtype, name="w")(x_BxLxD)
        v_BxLxF = nn.Dense(c.d_ff, use_bias=False, dtype=c.dtype, name="v")(x_BxLxD)
        return nn.Dense(c.d_model, use_bias=False, dtype=c.dtype, kernel_init=_out_init(c),
                        name="down")(w_BxLxF * v_BxLxF)


class GeluMLP(nn.Module):
    """down(gelu(up x)), with biases (GPT-2's MLP)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        c = self.cfg
        h_BxLxF = nn.gelu(nn.Dense(c.d_ff, dtype=c.dtype, name="up")(x_BxLxD))
        return nn.Dense(c.d_model, dtype=c.dtype, kernel_init=_out_init(c), name="down")(h_BxLxF)


MLPS = {"gelu": GeluMLP, "bilinear": BilinearMLP}


class Block(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))) unless mlp="none".

    Dropout is active only when the caller supplies a "dropout" RNG (the training step does).
    """

    cfg: ModelConfig
    attention: str
    mlp: str
    norm: str
    rope: bool

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array,
                 cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        c = self.cfg
        drop = nn.Dropout(c.dropout, deterministic=not self.has_rng("dropout"))

        def normed(name):
            norm = make_norm(self.norm, name)
            return x_BxLxD if norm is None else norm(x_BxLxD).astype(c.dtype)

        attn, cache = Attention(c, self.attention, self.rope, name="attn")(
            normed("ln_attn"), positions_L, cache)
        x_BxLxD = x_BxLxD + drop(attn).astype(x_BxLxD.dtype)
        if self.mlp != "none":
            x_BxLxD = x_BxLxD + drop(MLPS[self.mlp](c, name="mlp")(normed("ln_mlp"))).astype(
                x_BxLxD.dtype)
        return x_BxLxD, cache


class ToyTransformer(nn.Module):
    """n_layers Blocks with the config's attention kind, MLP kind, norm and RoPE choice."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array,
                 caches: tuple[KVCache, ...] | None = None
                 ) -> tuple[jax.Array, tuple[KVCache, ...] | None]:
        return run_blocks(self, h_BxLxD, positions_L, caches,
                          lambda i: Block(self.cfg, self.cfg.attention, self.cfg.mlp,
                                          self.cfg.norm, self.cfg.rope, name=f"block_{i}"))

    def cache_shape(self, batch: int, slots: int) -> tuple[KVCache, ...]:
        return cache_shape(self.cfg, batch, slots)


def run_blocks(backbone: nn.Module, h_BxLxD, positions_L, caches, make_block):
    """Embedding dropout, then the blocks in order, threading one cache per layer.

    Called inside ``backbone``'s compact ``__call__`` (its scope owns the blocks).
    """
    cfg = backbone.cfg
    h_BxLxD = nn.Dropout(cfg.dropout, deterministic=not backbone.has_rng("dropout"))(h_BxLxD)
    new_caches = []
    for i in range(cfg.n_layers):
        h_BxLxD, cache = make_block(i)(h_BxLxD.astype(cfg.dtype), positions_L,
                                       None if caches is None else caches[i])
        new_caches.append(cache)
    return h_BxLxD, (None if caches is None else tuple(new_caches))


def cache_shape(cfg: ModelConfig, batch: int, slots: int) -> tuple[KVCache, ...]:
    return tuple(KVCache.zeros(batch, slots, cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.dtype)
                 for _ in range(cfg.n_layers))


class MLPBackbone(nn.Module):
    """Position-wise residual MLP blocks, no mixing across positions (the grokking baseline)."""

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
