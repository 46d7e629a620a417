"""Transformer building blocks: RoPE, causal self-attention with an explicit KV cache, MLP, block.

Shapes in names: B batch, L tokens in this call, S cache slots, D d_model, H heads, K head dim,
F MLP hidden width.

The KV cache is an explicit pytree passed in and returned (never a mutable collection), so the
same pure function serves the full forward pass, prefill and one-token decoding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class KVCache(NamedTuple):
    """Keys and values of one attention layer for S slots; slots >= the next position are unused."""

    k_BxSxHxK: jax.Array
    v_BxSxHxK: jax.Array

    @staticmethod
    def zeros(batch: int, slots: int, heads: int, head_dim: int, dtype) -> KVCache:
        shape = (batch, slots, heads, head_dim)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    def write(self, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array, start: jax.Array) -> KVCache:
        """The cache with L new keys and values in slots ``start .. start + L - 1``."""
        def put(buf_BxSxHxK, new_BxLxHxK):
            return jax.lax.dynamic_update_slice_in_dim(
                buf_BxSxHxK, new_BxLxHxK.astype(buf_BxSxHxK.dtype), start, axis=1)

        return KVCache(put(self.k_BxSxHxK, k_BxLxHxK), put(self.v_BxSxHxK, v_BxLxHxK))


def apply_rope(x_BxLxHxK: jax.Array, positions_L: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (rotate-half convention), computed in float32."""
    half = x_BxLxHxK.shape[-1] // 2
    freqs_K2 = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_LxK2 = positions_L.astype(jnp.float32)[:, None] * freqs_K2[None, :]
    sin, cos = jnp.sin(angles_LxK2)[None, :, None, :], jnp.cos(angles_LxK2)[None, :, None, :]
    x = x_BxLxHxK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxHxK.dtype)


class QKVProjection(nn.Module):
    """Queries, keys and values from one (D, 3, H, K) kernel, applied as three matmuls.

    The parameter (name, shape, init) is that of ``nn.DenseGeneral(features=(3, H, K),
    use_bias=False)``, but q, k and v come out as separate contiguous arrays: slicing one fused
    (B, L, 3, H, K) output made XLA concatenate and transpose their gradients again in every
    layer's backward pass (bench/README.md).
    """

    n_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        def init(rng: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
            # DenseGeneral's init: lecun_normal on the flattened (D, 3*H*K) matrix
            flat = nn.initializers.lecun_normal()(rng, (shape[0], math.prod(shape[1:])), dtype)
            return flat.reshape(shape)

        kernel_Dx3xHxK = self.param(
            "kernel", init, (x_BxLxD.shape[-1], 3, self.n_heads, self.head_dim), jnp.float32)
        x_BxLxD = x_BxLxD.astype(self.dtype)
        kernel_Dx3xHxK = kernel_Dx3xHxK.astype(self.dtype)
        return tuple(jnp.einsum("bld,dhk->blhk", x_BxLxD, kernel_Dx3xHxK[:, i])
                     for i in range(3))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE.

    Without a cache it attends causally within the call. With a cache, the call's keys/values are
    written at ``positions_L`` and each query attends to every slot at or before its own position,
    which makes prefill + decoding equal to the full forward pass.
    """

    d_model: int
    n_heads: int
    dtype: jnp.dtype = jnp.float32
    attention_impl: str | None = None  # None lets JAX pick; "cudnn" forces flash attention on GPU

    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, positions_L: jax.Array, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
        head_dim = self.d_model // self.n_heads
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = QKVProjection(
            self.n_heads, head_dim, self.dtype, name="qkv")(x_BxLxD)
        q_BxLxHxK = apply_rope(q_BxLxHxK, positions_L)
        k_BxLxHxK = apply_rope(k_BxLxHxK, positions_L)
        if cache is None:
            out_BxLxHxK = jax.nn.dot_product_attention(
                q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=True,
                implementation=self.attention_impl,
            )
            new_cache = None
        else:
            new_cache = cache.write(k_BxLxHxK, v_BxLxHxK, positions_L[0])
            k_all, v_all = new_cache
            slots_S = jnp.arange(k_all.shape[1])
            mask_1x1xLxS = (slots_S[None, :] <= positions_L[:, None])[None, None]
            out_BxLxHxK = jax.nn.dot_product_attention(
                q_BxLxHxK, k_all.astype(q_BxLxHxK.dtype), v_all.astype(q_BxLxHxK.dtype),
                mask=mask_1x1xLxS,
            )
        out_BxLxD = nn.DenseGeneral(
            features=self.d_model, axis=(-2, -1), dtype=self.dtype, use_bias=False, name="out"
        )(out_BxLxHxK)
        return out_BxLxD, new_cache


class MLP(nn.Module):
    """Position-wise GELU MLP."""

    d_model: int
    d_ff: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        # remat: the backward pass recomputes GELU from its input instead of the forward pass
        # writing one more (B, L, F) intermediate for it (memory-bound on a GPU)
        h_BxLxF = jax.checkpoint(nn.gelu)(nn.Dense(self.d_ff, dtype=self.dtype, name="up")(x_BxLxD))
        return nn.Dense(self.d_model, dtype=self.dtype, name="down")(h_BxLxF)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)); norms in float32."""

    d_model: int
    n_heads: int
    d_ff: int
    dtype: jnp.dtype = jnp.float32
    attention_impl: str | None = None

    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, positions_L: jax.Array, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
        h = nn.LayerNorm(dtype=jnp.float32, name="ln_attn")(x_BxLxD)
        attn, cache = CausalSelfAttention(
            self.d_model, self.n_heads, self.dtype, self.attention_impl, name="attn"
        )(h.astype(self.dtype), positions_L, cache)
        x_BxLxD = x_BxLxD + attn.astype(x_BxLxD.dtype)
        h = nn.LayerNorm(dtype=jnp.float32, name="ln_mlp")(x_BxLxD)
        x_BxLxD = x_BxLxD + MLP(self.d_model, self.d_ff, self.dtype, name="mlp")(
            h.astype(self.dtype)).astype(x_BxLxD.dtype)
        return x_BxLxD, cache
