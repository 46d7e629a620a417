"""Model configuration: which input layer, backbone and head (by registry name) and their sizes."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A SequenceModel = input layer + backbone + head, each picked by name from models.registry."""

    input_layer: str = "patch"  # registry name: how observations become tokens
    backbone: str = "transformer"  # registry name: the sequence mixer
    head: str = "regression"  # registry name: how tokens become predictions
    n_layers: int = 4  # transformer blocks
    d_model: int = 256  # D, residual width
    n_heads: int = 4  # H, attention heads (head dim K = D / H, must be even for RoPE)
    d_ff: int = 1024  # F, MLP hidden width
    patch_size: int = 1  # P, observations per token (1..32, powers of two)
    revin: bool = True  # causal reversible instance normalization of inputs/outputs
    compute_dtype: str = "float32"  # float32 | bfloat16 (params and loss stay float32)
    attention_impl: str | None = None  # None: JAX picks; "cudnn": flash attention on GPU

    def __post_init__(self) -> None:
        from models import registry  # local import: registry imports the modules that use this

        for field, table in (("input_layer", registry.INPUT_LAYERS),
                             ("backbone", registry.BACKBONES), ("head", registry.HEADS)):
            if getattr(self, field) not in table:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r} is not registered; "
                                 f"allowed: {sorted(table)}")
        if self.compute_dtype not in DTYPES:
            raise ValueError(f"ModelConfig.compute_dtype={self.compute_dtype!r}; "
                             f"allowed: {sorted(DTYPES)}")
        if self.attention_impl not in (None, "xla", "cudnn"):
            raise ValueError(f"ModelConfig.attention_impl={self.attention_impl!r}; "
                             "allowed: None, 'xla', 'cudnn'")
        if min(self.n_layers, self.d_model, self.n_heads, self.d_ff) < 1:
            raise ValueError("ModelConfig n_layers, d_model, n_heads, d_ff must all be >= 1")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"ModelConfig.d_model={self.d_model} must be n_heads={self.n_heads} "
                             "times an even head dim (RoPE rotates pairs)")
        if self.patch_size < 1 or self.patch_size & (self.patch_size - 1) or self.patch_size > 32:
            raise ValueError(f"ModelConfig.patch_size={self.patch_size}; "
                             "allowed: 1, 2, 4, 8, 16, 32")

    @property
    def dtype(self):
        return DTYPES[self.compute_dtype]
