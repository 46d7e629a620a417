"""Model configuration: which input layer, backbone and head (by registry name) and their sizes.

Plain data: this module imports neither JAX nor Flax, so building a config (a CLI's --help, a
search-space check) loads no model code. Names are checked here against the tuples below;
models/registry.py asserts at import that its tables have exactly these names.

    ModelConfig(backbone="toy", attention="quadratic", mlp="bilinear", norm="rmsnorm")
"""

from __future__ import annotations

import dataclasses

INPUT_LAYERS = ("patch", "tokens", "onehot")  # models.registry.INPUT_LAYERS
BACKBONES = ("transformer", "toy", "gpt", "mlp", "routed")  # models.registry.BACKBONES
GATED_BACKBONES = ("routed",)  # backbones that sow gates (models.registry checks SOWS_GATES)
HEADS = ("regression", "classifier")  # models.registry.HEADS
ATTENTIONS = ("softmax", "quadratic")  # models.attention.ATTENTIONS
MLPS = ("gelu", "bilinear", "none")  # models.block.MLPS, plus "none" (no MLP branch)
NORMS = ("layernorm", "rmsnorm", "none")  # models.block.NORMS
DTYPES = ("float32", "bfloat16")  # names of jax.numpy dtypes
ATTENTION_IMPLS = (None, "xla", "cudnn")  # jax.nn.dot_product_attention's implementation


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A SequenceModel = input layer + backbone + head, each picked by name from models.registry.

    Letters used in shape names: D = d_model, H = n_heads, K = D / H, F = d_ff, P = patch_size.
    """

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
    attention_impl: str | None = None  # softmax attention: None JAX picks; "cudnn" flash on GPU
    # token models (models/tokens.py, the toy and gpt backbones); defaults leave the LDS model as is
    pos_embedding: bool = False  # "tokens" input: add learned absolute positions (GPT-style)
    max_len: int = 1024  # positions the learned positional table covers (prompt + generation)
    tie_embeddings: bool = False  # "classifier" head reuses the token table as output matrix
    attention: str = "softmax"  # toy backbone: softmax | quadratic ((q.k/K)^2, causal, no softmax)
    mlp: str = "gelu"  # toy/mlp backbones: gelu | bilinear ((W x)*(V x)) | none (attention-only)
    norm: str = "layernorm"  # toy/mlp backbones, classifier head: layernorm | rmsnorm | none
    rope: bool = True  # toy backbone: rotary positions in attention (gpt has learned ones)
    zero_init_out: bool = False  # all backbones: attention and MLP output projections start at 0
    dropout: float = 0.0  # transformer/toy/gpt: rate on embeddings and residual branches (training)
    # routed backbone (models/routed.py): a learned gate mixes parallel MLP heads per example
    n_routes: int = 4  # heads per routed layer (each a GELU MLP of width d_ff)
    route_top_k: int = 0  # heads each example runs through (the top-k gates); 0: all (soft)

    def __post_init__(self) -> None:
        for field, allowed in (("input_layer", INPUT_LAYERS), ("backbone", BACKBONES),
                               ("head", HEADS), ("compute_dtype", DTYPES),
                               ("attention_impl", ATTENTION_IMPLS), ("attention", ATTENTIONS),
                               ("mlp", MLPS), ("norm", NORMS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}; "
                                 f"allowed: {list(allowed)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ModelConfig.dropout={self.dropout}; allowed: [0, 1)")
        if self.n_routes < 1:
            raise ValueError(f"ModelConfig.n_routes={self.n_routes}; allowed: an integer >= 1")
        if not 0 <= self.route_top_k <= self.n_routes:
            raise ValueError(f"ModelConfig.route_top_k={self.route_top_k}; allowed: 0 (all "
                             f"heads) .. n_routes={self.n_routes}")
        if self.max_len < 1:
            raise ValueError(f"ModelConfig.max_len={self.max_len} must be >= 1")
        if self.tie_embeddings and (self.input_layer, self.head) != ("tokens", "classifier"):
            raise ValueError("ModelConfig.tie_embeddings=True needs input_layer='tokens' and "
                             f"head='classifier' (got {self.input_layer!r}, {self.head!r})")
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
        """``compute_dtype`` as a jax.numpy dtype (imported here: the rest is plain data)."""
        import jax.numpy as jnp

        return getattr(jnp, self.compute_dtype)
