"""tuner.core.routing beyond what tests/test_diagnostics.py checks (each regularizer on gates of
one position per example and one layer): every (batch, position) pair is an example, the
degenerate one-head gate, the mean over layers of a real two-layer routed model, and which
models report the routing metrics. Expected values are computed here in float64 NumPy from the
definitions in the module's docstring; float32 results agree to rtol 1e-5.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tuner.core import routing
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run


def np_entropy(g):  # mean over examples of -sum_h g log g, 0 log 0 = 0
    safe = np.where(g > 0, g, 1.0)
    return float(np.mean(-np.sum(np.where(g > 0, g * np.log(safe), 0.0), -1)))


def np_sparsity(g):  # mean over examples of (|g|_1 / |g|_2 - 1) / (sqrt(H) - 1)
    h = g.shape[-1]
    return float(np.mean((np.abs(g).sum(-1) / np.sqrt((g**2).sum(-1)) - 1) / (np.sqrt(h) - 1)))


def np_gini(g):  # Gini coefficient of the usage u = mean over examples
    u = g.mean(0)
    return float(np.abs(u[:, None] - u[None, :]).sum() / (2 * len(u) * u.sum()))


def np_head_util(g):  # entropy of the usage / log H
    u = g.mean(0)
    return float(-np.sum(np.where(u > 0, u * np.log(np.where(u > 0, u, 1.0)), 0.0))
                 / np.log(len(u)))


NUMPY = {"entropy": np_entropy, "sparsity": np_sparsity, "gini": np_gini}


def test_every_batch_position_pair_is_an_example():
    """Gates (B, L, H) with L > 1 score as B * L examples of H heads (not per position)."""
    g_BxLxH = np.random.default_rng(0).dirichlet(np.ones(5) * 0.6, size=(3, 7))
    examples = g_BxLxH.reshape(-1, 5)
    g32 = jax.numpy.asarray(g_BxLxH, jax.numpy.float32)
    for name, ref in NUMPY.items():
        np.testing.assert_allclose(float(routing.REGULARIZERS[name](g32)), ref(examples),
                                   rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(float(routing.head_util(g32)), np_head_util(examples), rtol=1e-5)
    # gini and head_util read usage over all examples: positions with opposite preferences
    # (position 0 all on head 0, position 1 all on head 1) balance each other out
    split = jax.numpy.asarray(np.stack([np.eye(2)[[0, 1]]] * 4))  # (B=4, L=2, H=2)
    assert float(routing.gini(split)) == pytest.approx(0.0, abs=1e-6)
    assert float(routing.head_util(split)) == pytest.approx(1.0, abs=1e-6)


def test_one_head_is_sharp_balanced_and_used():
    g = jax.numpy.ones((4, 3, 1), jax.numpy.float32)
    assert float(routing.entropy(g)) == pytest.approx(0.0, abs=1e-6)
    assert float(routing.sparsity(g)) == 0.0
    assert float(routing.gini(g)) == pytest.approx(0.0, abs=1e-6)
    assert float(routing.head_util(g)) == 1.0


def cfg_of(**over) -> RunConfig:
    """A two-layer routed model on the modular task, p = 5: a few hundred parameters."""
    return replace(RunConfig(), **{
        "task": "modular", "modular.p": 5, "model.input_layer": "onehot",
        "model.backbone": "routed", "model.head": "classifier", "model.n_layers": 2,
        "model.d_model": 4, "model.d_ff": 4, "model.n_heads": 2, "model.n_routes": 3, **over})


@pytest.fixture(scope="module")
def routed():
    run = Run(cfg_of())
    state = run.init_state()
    batch = run.task.sample(jax.random.PRNGKey(0), 1)
    out, inter = run.model.apply(state.params, run.task.inputs(batch),
                                 mutable=["intermediates"])
    layers = inter["intermediates"]["backbone"]
    gates = [np.asarray(layers[f"routed_{i}"]["gate"][0], np.float64) for i in range(2)]
    return run, state, batch, out, gates


def test_metrics_are_means_over_layers(routed):
    run, state, batch, _, gates = routed
    assert all(g.shape[-1] == 3 for g in gates) and not np.allclose(gates[0], gates[1])
    got = jax.jit(lambda p, x: routing.metrics(run.model, p, x))(state.params,
                                                                 run.task.inputs(batch))
    flat = [g.reshape(-1, 3) for g in gates]
    np.testing.assert_allclose(float(got["route_entropy"]),
                               np.mean([np_entropy(g) for g in flat]), rtol=1e-5)
    np.testing.assert_allclose(float(got["head_util"]),
                               np.mean([np_head_util(g) for g in flat]), rtol=1e-5)


@pytest.mark.parametrize("reg", ["entropy", "sparsity", "gini"])
def test_regularized_loss_adds_the_weighted_layer_mean(routed, reg):
    run, state, batch, out, gates = routed
    got = routing.regularized_loss(run.model, run.task, state.params, batch, {}, reg, 0.3)
    want = float(run.task.loss(out, batch)) + 0.3 * np.mean(
        [NUMPY[reg](g.reshape(-1, 3)) for g in gates])
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_only_gated_models_report_routing_metrics():
    routed_cfg = cfg_of().model
    mlp_cfg = cfg_of(**{"model.backbone": "mlp"}).model
    assert routing.metric_names(routed_cfg) == ("eval/route_entropy", "eval/head_util")
    assert routing.metric_names(mlp_cfg) == ()
    assert routing.is_routed(Run(cfg_of()).model)
    assert not routing.is_routed(Run(cfg_of(**{"model.backbone": "mlp"})).model)
