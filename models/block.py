"""The one transformer block of models/, and its parts: norms and MLPs.

Shapes in names: B batch, L tokens in this call, D d_model, F MLP hidden width.

Every backbone that mixes positions stacks this block; what differs between them (attention kind,
MLP kind, norm, RoPE, parameter layout) is a :class:`BlockSpec`, plain data chosen by the backbone
(models/backbone.py). Sizes, dtype, dropout and ``zero_init_out`` come from ``ModelConfig``.

- Bilinear MLP: down((W x) * (V x)), no activation: a quadratic form per output.
- Attention-only models set ``mlp="none"``; ``norm`` may be "none" for a purely polynomial net.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import Attention, KVCache, out_init
from models.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * scale, in float32 (no mean subtraction, no bias)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(jnp.float32)
        scale_D = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return x * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + self.eps) * scale_D


NORMS = {"layernorm": lambda name: nn.LayerNorm(dtype=jnp.float32, name=name),
         "rmsnorm": lambda name: RMSNorm(name=name),
         "none": lambda name: None}


def make_norm(kind: str, name: str) -> nn.Module | None:
    """The config's norm as a module (float32), or None for ``"none"``."""
    return NORMS[kind](name)


class GeluMLP(nn.Module):
    """down(gelu(up x)), with biases (GPT-2's MLP)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        c = self.cfg
        # remat: the backward pass recomputes GELU from its input instead of the forward pass
        # writing one more (B, L, F) intermediate for it (memory-bound on a GPU)
        h_BxLxF = jax.checkpoint(nn.gelu)(nn.Dense(c.d_ff, dtype=c.dtype, name="up")(x_BxLxD))
        return nn.Dense(c.d_model, dtype=c.dtype, kernel_init=out_init(c), name="down")(h_BxLxF)


class BilinearMLP(nn.Module):
    """down((W x) * (V x)): no activation, no biases."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        c = self.cfg
        w_BxLxF = nn.Dense(c.d_ff, use_bias=False, dtype=c.dtype, name="w")(x_BxLxD)
        v_BxLxF = nn.Dense(c.d_ff, use_bias=False, dtype=c.dtype, name="v")(x_BxLxD)
        return nn.Dense(c.d_model, use_bias=False, dtype=c.dtype, kernel_init=out_init(c),
                        name="down")(w_BxLxF * v_BxLxF)


MLPS = {"gelu": GeluMLP, "bilinear": BilinearMLP}  # "none": the block has no MLP


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """What a backbone chooses about its blocks (hashable: it is part of a jit-static model)."""

    attention: str  # softmax | quadratic (models.attention.ATTENTIONS)
    mlp: str  # gelu | bilinear | none (MLPS, or no MLP branch)
    norm: str  # layernorm | rmsnorm | none (NORMS), before each branch
    rope: bool  # rotary positions in attention
    qkv: str  # attention parameter layout: fused | split (models.attention.QKV_LAYOUTS)


class Block(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))) unless mlp="none".

    Norms run in float32 and each branch in ``cfg.dtype``. Dropout is active only when the caller
    supplies a "dropout" RNG (the training step does) and ``cfg.dropout > 0``.
    """

    cfg: ModelConfig
    spec: BlockSpec

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array,
                 cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        c, s = self.cfg, self.spec
        drop = nn.Dropout(c.dropout, deterministic=not self.has_rng("dropout"))

        def normed(name):
            norm = make_norm(s.norm, name)
            return x_BxLxD if norm is None else norm(x_BxLxD).astype(c.dtype)

        attn, cache = Attention(c, s.attention, s.rope, s.qkv, name="attn")(
            normed("ln_attn"), positions_L, cache)
        x_BxLxD = x_BxLxD + drop(attn).astype(x_BxLxD.dtype)
        if s.mlp != "none":
            x_BxLxD = x_BxLxD + drop(MLPS[s.mlp](c, name="mlp")(normed("ln_mlp"))).astype(
                x_BxLxD.dtype)
        return x_BxLxD, cache
