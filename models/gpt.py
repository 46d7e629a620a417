"""Sampling from a token model through a KV cache: greedy, top-k, top-p (SPEC section 7).

:func:`generate` reads a prompt into a KV cache once (prefill), then decodes one token per step.
Token i is drawn with ``fold_in(key, i)``, so a sampler without a cache that recomputes the full
forward pass each step gives the same tokens under one key (tests/test_text_models.py proves
the cache path equals the full forward that way). The GPT backbone is in models/backbone.py.

Shapes in names: B batch, W prompt tokens, N new tokens, V vocabulary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


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
