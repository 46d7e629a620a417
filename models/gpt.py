"""GPT-style language model backbone and sampling over a KV cache (SPEC section 7).

GPT = "tokens" input with learned positional embeddings (``model.pos_embedding``) + pre-LN
softmax-attention / GELU blocks without RoPE + "classifier" head (weight tying with
``model.tie_embeddings``); dropout (``model.dropout``) on the embeddings and every residual
branch while training.

Sampling: :func:`generate` reads a prompt into a KV cache once (prefill), then decodes one token
per step; :func:`generate_reference` recomputes the full forward pass for every new token. Both
draw token i with ``fold_in(key, i)``, so under one key they must produce the same tokens: that is
the test that the cache path equals the full forward.

Shapes in names: B batch, W prompt tokens, N new tokens, V vocabulary.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import KVCache
from models.toy import Block, cache_shape, run_blocks


class GPT(nn.Module):
    """Pre-LN blocks: softmax attention, GELU MLP, LayerNorm, no RoPE (positions are learned)."""

    cfg: object  # ModelConfig

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array, positions_L: jax.Array,
                 caches: tuple[KVCache, ...] | None = None):
        return run_blocks(self, h_BxLxD, positions_L, caches,
                          lambda i: Block(self.cfg, "softmax", "gelu", "layernorm", False,
                                          name=f"block_{i}"))

    def cache_shape(self, batch: int, slots: int) -> tuple[KVCache, ...]:
        return cache_shape(self.cfg, batch, slots)


def filter_logits(logits_BxV: jax.Array, top_k: int | None, top_p: float | None) -> jax.Array:
    """Keeps the ``top_k`` largest logits and the smallest set whose probability reaches
    ``top_p`` (nucleus); the rest become -inf. The most likely token always survives."""
    logits = logits_BxV.astype(jnp.float32)
    if top_k is not None:
        kth_Bx1 = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_Bx1, -jnp.inf, logits)
    if top_p is not None:
        sorted_BxV = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_BxV, axis=-1)
        before_BxV = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep = before_BxV < top_p
        cutoff_Bx1 = jnp.min(jnp.where(keep, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff_Bx1, -jnp.inf, logits)
    return logits


def sample_token(logits_BxV: jax.Array, key: jax.Array, temperature: float,
                 top_k: int | None, top_p: float | None) -> jax.Array:
    """Greedy when ``temperature == 0``, else a draw from the filtered, tempered softmax."""
    if temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits_BxV / temperature, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _prefill(m, x_BxW: jax.Array, slots: int):
    """Run inside ``model.apply``: logits for the next token and the filled caches."""
    h, table = m.inputs(x_BxW)
    caches = m.backbone.cache_shape(x_BxW.shape[0], slots)
    h, caches = m.backbone(h, jnp.arange(x_BxW.shape[1]), caches)
    return m.head(h[:, -1:], table)[:, 0], caches


def _decode(m, tok_B: jax.Array, position: jax.Array, caches):
    h, table = m.inputs.embed_at(tok_B[:, None], position[None])
    h, caches = m.backbone(h, position[None], caches)
    return m.head(h, table)[:, 0], caches


@functools.partial(jax.jit, static_argnames=("model", "n_new", "temperature", "top_k", "top_p"))
def generate(model, params, prompt_BxW: jax.Array, key: jax.Array, *, n_new: int,
             temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None) -> jax.Array:
    """``n_new`` tokens after the prompt, (B, N), with a KV cache of W + N slots."""
    w = prompt_BxW.shape[1]
    if model.cfg.pos_embedding and w + n_new > model.cfg.max_len:
        raise ValueError(f"prompt {w} + n_new {n_new} exceeds model.max_len={model.cfg.max_len}")
    logits, caches = model.apply(params, prompt_BxW, w + n_new, method=_prefill)

    def step(carry, i):
        logits, caches = carry
        tok = sample_token(logits, jax.random.fold_in(key, i), temperature, top_k, top_p)
        logits, caches = model.apply(params, tok, w + i, caches, method=_decode)
        return (logits, caches), tok

    _, toks_NxB = jax.lax.scan(step, (logits, caches), jnp.arange(n_new))
    return toks_NxB.T


def generate_reference(model, params, prompt_BxW: jax.Array, key: jax.Array, *, n_new: int,
                       temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None) -> jax.Array:
    """:func:`generate` without a cache: the full forward pass over the whole text each step."""
    x = prompt_BxW
    for i in range(n_new):
        logits = model.apply(params, x)[:, -1]
        tok = sample_token(logits, jax.random.fold_in(key, i), temperature, top_k, top_p)
        x = jnp.concatenate([x, tok[:, None]], axis=1)
    return x[:, prompt_BxW.shape[1]:]
