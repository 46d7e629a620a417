"""Token input layers and the classification head: discrete sequences -> tokens -> logits.

Shapes in names: B batch, T tokens, L tokens in this call, D d_model, V vocabulary.

The input layer returns ``(h_BxTxD, carry)`` like the LDS's PatchInput returns its RevIN
statistics: the carry is what the head needs from the input layer. For a tied model that is the
token table itself (the head's output matrix), passed as data instead of reached for through
the module tree; otherwise None.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.block import make_norm
from models.config import ModelConfig

EMBED_INIT = nn.initializers.normal(stddev=0.02)  # GPT-2's; keeps tied logits small at init


class TokenInput(nn.Module):
    """Token embedding (+ learned absolute positions when ``cfg.pos_embedding``).

    No shift: output t of the model reads tokens 0..t. Tasks align targets (an LM feeds
    ``x[:, :-1]`` and scores ``x[:, 1:]``), so the same layer serves LMs and classifiers.
    """

    cfg: ModelConfig
    dim_y: int  # V, vocabulary size

    def setup(self) -> None:
        self.tok = nn.Embed(self.dim_y, self.cfg.d_model, embedding_init=EMBED_INIT, name="tok")
        if self.cfg.pos_embedding:
            self.pos = nn.Embed(self.cfg.max_len, self.cfg.d_model, embedding_init=EMBED_INIT,
                                name="pos")

    def embed_at(self, x_BxL: jax.Array, positions_L: jax.Array
                 ) -> tuple[jax.Array, jax.Array | None]:
        """Tokens at given positions (decoding feeds one at a time)."""
        h_BxLxD = self.tok(x_BxL)
        if self.cfg.pos_embedding:
            h_BxLxD = h_BxLxD + self.pos(positions_L)[None]
        return h_BxLxD, (self.tok.embedding if self.cfg.tie_embeddings else None)

    def __call__(self, x_BxT: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        return self.embed_at(x_BxT, jnp.arange(x_BxT.shape[1]))


class OneHotInput(nn.Module):
    """The whole sequence as one vector: concatenated one-hot tokens -> Dense(D), one position.

    The MLP baseline of the grokking literature reads (a, b) this way; equivalently a separate
    embedding table per position, summed.
    """

    cfg: ModelConfig
    dim_y: int  # V

    @nn.compact
    def __call__(self, x_BxT: jax.Array) -> tuple[jax.Array, None]:
        b, t = x_BxT.shape
        onehot_BxTV = jax.nn.one_hot(x_BxT, self.dim_y, dtype=jnp.float32).reshape(b, 1, -1)
        return nn.Dense(self.cfg.d_model, name="embed")(onehot_BxTV), None


class ClassifierHead(nn.Module):
    """Final norm + linear map to V logits at every position (float32).

    With ``cfg.tie_embeddings`` the output matrix is the token table passed in ``table_VxD``.
    """

    cfg: ModelConfig
    dim_y: int  # V

    @nn.compact
    def __call__(self, h_BxLxD: jax.Array, table_VxD: jax.Array | None = None) -> jax.Array:
        h = h_BxLxD.astype(jnp.float32)
        norm = make_norm(self.cfg.norm, "ln_final")
        if norm is not None:
            h = norm(h)
        if self.cfg.tie_embeddings:
            return jnp.einsum("bld,vd->blv", h, table_VxD.astype(jnp.float32))
        return nn.Dense(self.dim_y, use_bias=False, name="proj")(h)
