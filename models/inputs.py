"""Input layers: continuous observations -> tokens, with causal RevIN statistics.

Patching (SPEC section 4): P consecutive observations form one token, and a zero patch is
prepended, so token k carries patch k (observations (k-1)P+1..kP; token 0 carries zeros) and its
output predicts patch k+1 from observations 1..kP only.

Token 0 (the zero patch) is a learned start vector of unit variance, not ``embed(0)``: that is
the embedding bias alone, zero at init and the same for every sequence, so token 0's residual
stream stayed exactly zero through every block (it attends only to itself and each sublayer maps
0 to its zero bias). Every LayerNorm on a zero-variance vector scales its gradient by
1/sqrt(eps) = 1e3; over the default model's 9 LayerNorms the gradient norm overflowed float32,
clipping zeroed every update, and at patch > 1 (token 0 predicts y_2..y_P) the model never
trained (bench/README.md, "The hard setting").

Causal RevIN: token k is normalized with per-sequence, per-channel statistics of the observations
1..kP it may see, and the head scales its prediction back with the same statistics. One pseudo
observation of mean 0 and variance 1 keeps the statistics defined (and bounded away from 0) for
the first tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ModelConfig

EPS = 1e-5


class Stats(NamedTuple):
    """Per-token normalization statistics, (B, N, Y) each; what the head needs to scale back."""

    mean_BxNxY: jax.Array
    std_BxNxY: jax.Array


class RunningSums(NamedTuple):
    """Sufficient statistics of the observations seen so far, carried while decoding."""

    sum_BxY: jax.Array
    sumsq_BxY: jax.Array
    count: jax.Array  # () observations seen


def _stats_from_sums(sum_, sumsq, count) -> tuple[jax.Array, jax.Array]:
    n = count + 1.0  # one pseudo observation: mean 0, variance 1
    mean = sum_ / n
    var = (sumsq + 1.0) / n - mean**2
    return mean, jnp.sqrt(jnp.maximum(var, 0.0) + EPS)


def causal_stats(y_BxTxY: jax.Array, patch: int) -> Stats:
    """Statistics for tokens k = 0..N-1, token k using observations 1..kP only."""
    batch, _, dim_y = y_BxTxY.shape
    zero = jnp.zeros((batch, 1, dim_y), jnp.float32)
    y = y_BxTxY.astype(jnp.float32)
    # cumulative sums after each complete patch, with a leading zero for token 0
    csum_BxNxY = jnp.concatenate([zero, jnp.cumsum(y, 1)[:, patch - 1 :: patch][:, :-1]], 1)
    csq_BxNxY = jnp.concatenate([zero, jnp.cumsum(y**2, 1)[:, patch - 1 :: patch][:, :-1]], 1)
    count_N = jnp.arange(csum_BxNxY.shape[1], dtype=jnp.float32)[None, :, None] * patch
    return Stats(*_stats_from_sums(csum_BxNxY, csq_BxNxY, count_N))


def to_patches(y_BxTxY: jax.Array, patch: int) -> jax.Array:
    """(B, T, Y) -> (B, N, P, Y) with N = T / P."""
    batch, seq_len, dim_y = y_BxTxY.shape
    return y_BxTxY.reshape(batch, seq_len // patch, patch, dim_y)


class PatchInput(nn.Module):
    """Causal RevIN + patching + zero patch + a linear embedding to d_model."""

    cfg: ModelConfig
    dim_y: int

    def setup(self) -> None:
        self.embed = nn.Dense(self.cfg.d_model, name="embed")
        # token 0: learned, unit variance per coordinate like the embedded patches (module
        # docstring: embed(0) = bias = 0 made token 0's LayerNorms degenerate)
        self.start = self.param("start", nn.initializers.normal(1.0), (self.cfg.d_model,))

    def _embed(self, patches_BxNxPxY: jax.Array, stats: Stats) -> jax.Array:
        if self.cfg.revin:
            patches_BxNxPxY = (patches_BxNxPxY - stats.mean_BxNxY[:, :, None]) / stats.std_BxNxY[
                :, :, None]
        b, n = patches_BxNxPxY.shape[:2]
        return self.embed(patches_BxNxPxY.reshape(b, n, -1).astype(jnp.float32))

    def __call__(self, y_BxTxY: jax.Array) -> tuple[jax.Array, Stats]:
        """Tokens for the full sequence: [start (the zero patch), patch 1, ..., patch N-1]."""
        p = self.cfg.patch_size
        patches = to_patches(y_BxTxY.astype(jnp.float32), p)
        stats = causal_stats(y_BxTxY, p)
        tokens_BxNxD = self._embed(patches[:, :-1], jax.tree.map(lambda s: s[:, 1:], stats))
        start_Bx1xD = jnp.broadcast_to(self.start, (tokens_BxNxD.shape[0], 1, self.cfg.d_model))
        return jnp.concatenate([start_Bx1xD.astype(tokens_BxNxD.dtype), tokens_BxNxD], 1), stats

    def carry_after(self, y_BxTxY: jax.Array) -> RunningSums:
        """Running sums after observing all of ``y`` (the start state for decoding)."""
        y = y_BxTxY.astype(jnp.float32)
        return RunningSums(y.sum(1), (y**2).sum(1), jnp.asarray(y.shape[1], jnp.float32))

    def step(self, patches_BxLxPxY: jax.Array, carry: RunningSums
             ) -> tuple[jax.Array, Stats, RunningSums]:
        """Tokens for L new real patches fed after ``carry``'s observations (decoding)."""
        y = patches_BxLxPxY.astype(jnp.float32)
        csum = carry.sum_BxY[:, None] + jnp.cumsum(y.sum(2), 1)
        csq = carry.sumsq_BxY[:, None] + jnp.cumsum((y**2).sum(2), 1)
        count = carry.count + self.cfg.patch_size * jnp.arange(1, y.shape[1] + 1, dtype=jnp.float32)
        stats = Stats(*_stats_from_sums(csum, csq, count[None, :, None]))
        new_carry = RunningSums(csum[:, -1], csq[:, -1], count[-1])
        return self._embed(y, stats), stats, new_carry
