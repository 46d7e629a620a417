"""Causal multi-head self-attention with RoPE and an explicit KV cache (the one in models/).

Shapes in names: B batch, L tokens in this call, S key slots (S == L without a cache), D d_model,
H heads, K head dim.

Two kinds share every other step (projections, RoPE, cache, mask):

- ``softmax``: ``jax.nn.dot_product_attention``, so ``ModelConfig.attention_impl="cudnn"`` gets
  cuDNN flash attention on GPU (the LDS experiments train this way).
- ``quadratic``: weights (q.k / K)^2 under the causal mask, no softmax, computed explicitly in
  float32, so a layer is a polynomial of its input (what makes toy models tractable to analyse).

The KV cache is a pytree passed in and returned (never a mutable collection), so the same pure
function serves the full forward pass, prefill and one-token decoding.

Two parameter layouts (``qkv``) hold the same linear maps; they exist so that trained checkpoints
of both model families keep loading: ``"fused"`` (the LDS model) is one (D, 3, H, K) kernel
``qkv`` and an (H, K, D) kernel ``out``; ``"split"`` (toy and GPT models) is three (D, H*K)
kernels ``q``, ``k``, ``v`` and an (H*K, D) kernel ``out``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ModelConfig


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


def out_init(cfg: ModelConfig) -> nn.initializers.Initializer:
    """Init of every residual branch's output projection: zeros with ``cfg.zero_init_out``, so
    the network starts as its embedding read out directly (common for circuit analysis)."""
    return nn.initializers.zeros if cfg.zero_init_out else nn.initializers.lecun_normal()


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


# Layouts: (in projection, out projection), each called inside Attention's compact scope so the
# parameters sit directly under the attention module.

def _fused_in(cfg: ModelConfig, x_BxLxD: jax.Array):
    return QKVProjection(cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.dtype, name="qkv")(x_BxLxD)


def _fused_out(cfg: ModelConfig, o_BxLxHxK: jax.Array) -> jax.Array:
    return nn.DenseGeneral(features=cfg.d_model, axis=(-2, -1), dtype=cfg.dtype, use_bias=False,
                           kernel_init=out_init(cfg), name="out")(o_BxLxHxK)


def _split_in(cfg: ModelConfig, x_BxLxD: jax.Array):
    b, length, _ = x_BxLxD.shape
    k_dim = cfg.d_model // cfg.n_heads

    def proj(name):
        return nn.Dense(cfg.n_heads * k_dim, use_bias=False, dtype=cfg.dtype, name=name)(
            x_BxLxD).reshape(b, length, cfg.n_heads, k_dim)

    return proj("q"), proj("k"), proj("v")


def _split_out(cfg: ModelConfig, o_BxLxHxK: jax.Array) -> jax.Array:
    b, length = o_BxLxHxK.shape[:2]
    return nn.Dense(cfg.d_model, use_bias=False, dtype=cfg.dtype, kernel_init=out_init(cfg),
                    name="out")(o_BxLxHxK.reshape(b, length, -1))


QKV_LAYOUTS = {"fused": (_fused_in, _fused_out), "split": (_split_in, _split_out)}


def softmax_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_LxS, implementation):
    """softmax(q.k / sqrt(K)) v. Without a mask the call is causal over its own L tokens, the form
    cuDNN's flash attention takes; the cache path's mask goes to JAX's default implementation."""
    if mask_LxS is None:
        return jax.nn.dot_product_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=True,
                                            implementation=implementation)
    return jax.nn.dot_product_attention(
        q_BxLxHxK, k_BxSxHxK.astype(q_BxLxHxK.dtype), v_BxSxHxK.astype(q_BxLxHxK.dtype),
        mask=mask_LxS[None, None])


def quadratic_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_LxS, implementation):
    """(q.k / K)^2 v under the causal mask, in float32; ``implementation`` is unused (no kernel
    library has this form)."""
    del implementation
    if mask_LxS is None:
        steps_L = jnp.arange(q_BxLxHxK.shape[1])
        mask_LxS = steps_L[None, :] <= steps_L[:, None]
    dots_BxHxLxS = jnp.einsum("blhk,bshk->bhls", q_BxLxHxK, k_BxSxHxK,
                              preferred_element_type=jnp.float32)
    w_BxHxLxS = jnp.where(mask_LxS, (dots_BxHxLxS / q_BxLxHxK.shape[-1]) ** 2, 0.0)
    out_BxLxHxK = jnp.einsum("bhls,bshk->blhk", w_BxHxLxS, v_BxSxHxK.astype(jnp.float32))
    return out_BxLxHxK.astype(q_BxLxHxK.dtype)


ATTENTIONS = {"softmax": softmax_attention, "quadratic": quadratic_attention}


class Attention(nn.Module):
    """Causal multi-head self-attention of one kind, optional RoPE, explicit KV cache.

    Without a cache the call's L tokens attend causally among themselves (they are consecutive
    positions). With a cache, the call's keys/values are written at ``positions_L`` and each query
    attends to every slot at or before its own position, which makes prefill + decoding equal to
    the full forward pass.
    """

    cfg: ModelConfig
    kind: str  # softmax | quadratic (ATTENTIONS)
    rope: bool  # rotate q and k by their positions
    qkv: str  # parameter layout: fused | split (QKV_LAYOUTS)

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array,
                 cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        project_in, project_out = QKV_LAYOUTS[self.qkv]
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = project_in(self.cfg, x_BxLxD)
        if self.rope:
            q_BxLxHxK = apply_rope(q_BxLxHxK, positions_L)
            k_BxLxHxK = apply_rope(k_BxLxHxK, positions_L)
        if cache is None:
            k_all, v_all, mask_LxS = k_BxLxHxK, v_BxLxHxK, None
        else:
            cache = cache.write(k_BxLxHxK, v_BxLxHxK, positions_L[0])
            k_all, v_all = cache
            mask_LxS = jnp.arange(k_all.shape[1])[None, :] <= positions_L[:, None]
        out_BxLxHxK = ATTENTIONS[self.kind](q_BxLxHxK, k_all, v_all, mask_LxS,
                                            self.cfg.attention_impl)
        return project_out(self.cfg, out_BxLxHxK), cache
