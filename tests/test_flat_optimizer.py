"""``adamw_flat`` (one flat vector) trains exactly like ``adamw`` (per leaf): same parameters,
moments, losses and gradient norms, computed side by side here in float32 on the CPU.

Tolerance: the two programs round differently (the global norm's summation order; XLA contracts
and fuses the elementwise update differently per leaf and flat, and differently per CPU), so they
agree to float32 rounding of 6 training steps (tests/tolerance.py: ~1e-4 x each array's scale),
not bit for bit; against a float64 AdamW both are close to a few float32 ulps (checked below).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerance import assert_f32_close, forward_depth, train_depth

from tuner.core import flat_adamw, optimizers, steps
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run
from tuner.core.optimizer_base import decay_mask

SMALL = replace(RunConfig(), **{
    "data.dim_x": 4, "data.seq_len": 32, "model.n_layers": 2, "model.d_model": 32,
    "model.n_heads": 2, "model.d_ff": 64, "train.batch_size": 8, "train.steps": 20,
    "train.lr": 3e-3, "train.weight_decay": 0.5, "train.warmup_frac": 0.1})
DEPTH = train_depth(forward_depth(n_layers=2, d_model=32, d_ff=64, seq_len=32, head_dim=16), 6)


def _train(cfg, n_steps: int):
    run = Run(cfg)
    return steps.train_steps(run.init_state(), run.task, run.hparams, spec=run.spec,
                             n_steps=n_steps)


@pytest.mark.parametrize("clip_norm", [1e-3, 1e6], ids=["always_clipped", "never_clipped"])
def test_flat_adamw_equals_per_leaf_adamw(clip_norm):
    cfg = replace(SMALL, **{"train.clip_norm": clip_norm})
    per_leaf, m_leaf = _train(cfg, 6)
    flat, m_flat = _train(replace(cfg, **{"train.optimizer": "adamw_flat"}), 6)
    assert_f32_close(m_flat["loss"], m_leaf["loss"], DEPTH)
    assert_f32_close(m_flat["grad_norm"], m_leaf["grad_norm"], DEPTH)
    leaves_leaf, leaves_flat = jax.tree.leaves(per_leaf.params), jax.tree.leaves(flat.params)
    assert [x.shape for x in leaves_leaf] == [x.shape for x in leaves_flat]
    for a, b in zip(leaves_flat, leaves_leaf, strict=True):
        assert_f32_close(a, b, DEPTH)
    adam = per_leaf.opt_state[1]  # chain(clip, scale_by_adam): the Adam state
    assert int(flat.opt_state.count) == int(adam.count) == 6
    for ours, theirs in ((flat.opt_state.mu, adam.mu), (flat.opt_state.nu, adam.nu)):
        theirs = flat_adamw.ravel(theirs)
        assert_f32_close(ours, theirs, DEPTH)


@pytest.mark.parametrize("name", ["adamw", "adamw_flat"])
def test_adamw_steps_match_float64_reference(name):
    """Both optimizers, 3 steps on fixed gradients, against AdamW in float64 NumPy (clip,
    moments, bias correction, masked decoupled decay): a wrong beta, eps or mask fails here."""
    run = Run(replace(SMALL, **{"train.clip_norm": 0.5}))
    params = run.init_state().params
    leaves, treedef = jax.tree.flatten(params)
    key = jax.random.PRNGKey(1)
    grads = jax.tree.unflatten(treedef, [
        0.1 * jax.random.normal(jax.random.fold_in(key, i), x.shape) for i, x in enumerate(leaves)])
    opt = optimizers.OPTIMIZERS[name](0.9, 0.95, 0.5)
    apply = jax.jit(opt.apply)
    state, new = opt.init(params), params
    for _ in range(3):
        new, state, _ = apply(grads, state, new, jnp.float32(-3e-3), jnp.float32(0.5))

    f64 = lambda tree: np.asarray(flat_adamw.ravel(tree), np.float64)  # noqa: E731
    g, p = f64(grads), f64(params)
    decays = f64(jax.tree.map(lambda m, x: jnp.full(x.shape, m, jnp.float32),
                              decay_mask(params), params))
    g = g * min(1.0, 0.5 / np.linalg.norm(g))
    mu = nu = 0.0
    for t in (1, 2, 3):
        mu, nu = 0.9 * mu + 0.1 * g, 0.95 * nu + 0.05 * g**2
        u = (mu / (1 - 0.9**t)) / (np.sqrt(nu / (1 - 0.95**t)) + 1e-8)
        p = p - 3e-3 * (u + 0.5 * decays * p)
    # float32 against exact: 3 steps of ~10 elementwise roundings each; rtol 1e-6 (8 eps32)
    # on O(0.1) parameters, atol 1e-7 for those near zero (their updates are ~3e-3 x O(1))
    np.testing.assert_allclose(f64(new), p, rtol=1e-6, atol=1e-7)


def test_flat_adamw_decays_matrices_only():
    """With the gradient clipped to ~0, one step is decay alone: matrices shrink by lr*wd,
    biases, norm scales and the start vector do not move (tuner.core.optimizer_base.decay_mask)."""
    run = Run(replace(SMALL, **{"train.optimizer": "adamw_flat"}))
    params = run.init_state().params
    opt = run.spec.optimizer_impl()
    zero = jax.tree.map(jnp.zeros_like, params)
    new, _, _ = opt.apply(zero, opt.init(params), params, jnp.float32(-0.1), jnp.float32(0.5))
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        q = dict(jax.tree_util.tree_leaves_with_path(new))[path]
        np.testing.assert_allclose(q, p * (1 - 0.05) if p.ndim >= 2 else p, rtol=1e-6)


def test_ravel_round_trip_and_one_dtype():
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.ones(4), "d": jnp.zeros((1, 2))}}
    flat = flat_adamw.ravel(tree)
    assert flat.shape == (12,)
    back = flat_adamw.unravel(flat, tree)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="one dtype"):
        flat_adamw.ravel({"a": jnp.ones(2), "b": jnp.ones(2, jnp.bfloat16)})
