"""Output heads: tokens -> predictions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.inputs import Stats


class RegressionHead(nn.Module):
    """Final LayerNorm + linear map to a whole patch, scaled back by the causal RevIN statistics."""

    cfg: ModelConfig
    dim_y: int

    @nn.compact
    def __call__(self, h_BxNxD: jax.Array, stats: Stats) -> jax.Array:
        """Returns predictions (B, N*P, Y): token k's output fills positions kP..kP+P-1."""
        b, n, _ = h_BxNxD.shape
        h = nn.LayerNorm(dtype=jnp.float32, name="ln_final")(h_BxNxD.astype(jnp.float32))
        out = nn.Dense(self.cfg.patch_size * self.dim_y, name="proj")(h)
        out_BxNxPxY = out.reshape(b, n, self.cfg.patch_size, self.dim_y)
        if self.cfg.revin:
            out_BxNxPxY = out_BxNxPxY * stats.std_BxNxY[:, :, None] + stats.mean_BxNxY[:, :, None]
        return out_BxNxPxY.reshape(b, n * self.cfg.patch_size, self.dim_y)
