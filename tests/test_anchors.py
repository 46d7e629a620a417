"""The JAX speed anchor (bench/anchor_jax.py) is the same model as models/: given our parameters
(renamed to its auto-named modules) it computes our predictions, float32 on the CPU. The torch
anchor mirrors the JAX one line by line (torch is not a project dependency; not tested here)."""

import jax
import jax.numpy as jnp
import pytest
from tolerance import assert_f32_close, forward_depth

from bench.anchor_data import lds_pool, small_spec
from bench.anchor_jax import Model
from models.config import ModelConfig
from models.sequence_model import SequenceModel

BLOCK = {"DenseGeneral_0": ("attn", "qkv"), "DenseGeneral_1": ("attn", "out"),
         "Dense_0": ("mlp", "down"), "Dense_1": ("mlp", "up"),  # outer Dense is built first
         "LayerNorm_0": ("ln_attn",), "LayerNorm_1": ("ln_mlp",)}
TOP = {"Dense_0": ("inputs", "embed"), "Dense_1": ("head", "proj"),
       "LayerNorm_0": ("head", "ln_final"), "start": ("inputs", "start")}


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def anchor_params(ours: dict, n_layers: int) -> dict:
    p = ours["params"]
    out = {name: _get(p, path) for name, path in TOP.items()}
    for i in range(n_layers):
        block = _get(p, ("backbone", f"block_{i}"))
        out[f"Block_{i}"] = {name: _get(block, path) for name, path in BLOCK.items()}
    return {"params": out}


@pytest.mark.parametrize("attention", ["einsum", "xla"])
def test_jax_anchor_is_our_model(attention):
    spec = small_spec(n_layers=2)
    ours = SequenceModel(ModelConfig(n_layers=spec.n_layers, d_model=spec.d_model,
                                     n_heads=spec.n_heads, d_ff=spec.d_ff), spec.dim_y)
    y = jnp.asarray(lds_pool(spec, 4, 1)[0][0])
    params = ours.init(jax.random.PRNGKey(3), y)
    # perturb every leaf so that zero/one inits (biases, norm scales) are tested too
    leaves, treedef = jax.tree.flatten(params)
    params = jax.tree.unflatten(treedef, [
        x + 0.1 * jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(4), i), x.shape)
        for i, x in enumerate(leaves)])
    theirs = Model(spec, jnp.float32, attention)
    mapped = anchor_params(params, spec.n_layers)
    shapes = jax.eval_shape(theirs.init, jax.random.PRNGKey(0), y)
    assert jax.tree.structure(mapped) == jax.tree.structure(shapes)
    # two implementations of one function: equal to float32 rounding (tests/tolerance.py)
    assert_f32_close(theirs.apply(mapped, y), ours.apply(params, y), forward_depth(
        spec.n_layers, spec.d_model, spec.d_ff, spec.seq_len, spec.d_model // spec.n_heads))
