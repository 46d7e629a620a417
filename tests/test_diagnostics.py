"""Every diagnostic (tuner.core.diagnostics) against an exact, independent computation on a tiny
routed model (262 parameters, modular task p = 5), and the routing regularizers and metrics
(tuner.core.routing) against numpy formulas.

Tolerances: deterministic quantities (Fisher trace, spectral smoothness, weight and
representation norms, Adam statistics, gradient norm, the estimators fed every basis vector as
a probe) agree to float32 rounding, rtol 1e-4 or tighter. The random-probe estimators (Hutchinson
trace, Jacobian norm) are unbiased, so with 4,000 probes they must lie within 4 standard errors
of the exact value, the standard error computed in the test from independent samples of the same
estimator (a false alarm about 1 in 16,000).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.flatten_util import ravel_pytree

from models.routed import top_k_gates
from models.sequence_model import SequenceModel
from tuner.core import diagnostics, routing, steps
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run

PROBES = 4000


def tiny_cfg(**over) -> RunConfig:
    return replace(RunConfig(), **{
        "task": "modular", "modular.p": 5, "model.input_layer": "onehot",
        "model.backbone": "routed", "model.head": "classifier", "model.n_layers": 1,
        "model.d_model": 4, "model.d_ff": 4, "model.n_heads": 2, "model.n_routes": 2,
        "train.steps": 6, "train.eval_every": 3, "train.weight_decay": 0.1,
        "train.diagnostics_probes": PROBES, **over})


@pytest.fixture(scope="module")
def trained():
    """The tiny run after 3 real steps (Adam moments non-trivial), and its diagnostics."""
    run = Run(tiny_cfg())
    state, _ = steps.train_steps(run.init_state(), run.task, run.hparams, spec=run.spec,
                                 n_steps=3)
    diag = diagnostics.compute(state, run.task, run.hparams, spec=run.spec,
                               names=tuple(diagnostics.ESTIMATORS), n_probes=PROBES)
    return run, state, {k: float(v) for k, v in diag.items()}


def batch_of(run, state):
    """The batch the diagnostics read: the next step's (here the whole train set)."""
    return run.task.sample(jax.random.fold_in(state.data_key, state.step), 1)


def test_model_has_a_few_hundred_parameters(trained):
    run, state, _ = trained
    assert 100 <= ravel_pytree(state.params)[0].size <= 500


def flat_loss(run, state):
    b = batch_of(run, state)
    w0, unravel = ravel_pytree(state.params)
    return (lambda w: run.task.loss(run.model.apply(unravel(w), run.task.inputs(b)), b)), w0


def test_hessian_trace_matches_jax_hessian(trained):
    """Exact: tr of jax.hessian on the flattened parameters. (1) Every basis vector as a probe
    sums to the trace (rtol 1e-4); (2) the estimate with Rademacher probes lies within 4 SE of
    it; (3) its per-probe variance is Rademacher's, 2 * sum_{i != j} H_ij^2 (within 15%)."""
    run, state, diag = trained
    loss, w0 = flat_loss(run, state)
    hess = np.asarray(jax.jit(jax.hessian(loss))(w0), np.float64)
    exact = np.trace(hess)
    forms = jax.jit(lambda v: diagnostics.hessian_quadratic_forms(loss, w0, v))  # one compile
    basis = jnp.eye(w0.size, dtype=w0.dtype)
    np.testing.assert_allclose(float(jnp.sum(forms(basis))), exact, rtol=1e-4)
    probes = diagnostics.rademacher_probes(w0, jax.random.PRNGKey(7), PROBES)
    samples = np.asarray(forms(probes), np.float64)
    se = samples.std(ddof=1) / math.sqrt(PROBES)
    assert abs(diag["hessian_trace"] - exact) < 4 * se, (diag["hessian_trace"], exact, se)
    var = 2 * (np.sum(hess**2) - np.sum(np.diag(hess) ** 2))
    assert abs(samples.var(ddof=1) / var - 1) < 0.15


def test_fisher_trace_matches_a_loop_over_examples(trained):
    """Exact: mean over the examples of ||grad of that example's loss||^2, one jax.grad per
    example in a Python loop (rtol 1e-5)."""
    run, state, diag = trained
    b = batch_of(run, state)
    n = min(len(b["y"]), diagnostics.SUBSAMPLE)
    total = 0.0
    for i in range(n):
        e = {k: v[i:i + 1] for k, v in b.items()}
        g = jax.grad(lambda p, e=e: run.task.loss(run.model.apply(p, run.task.inputs(e)), e))(
            state.params)
        total += float(np.sum(np.asarray(ravel_pytree(g)[0], np.float64) ** 2))
    np.testing.assert_allclose(diag["fisher_trace"], total / n, rtol=1e-5)


def test_input_jacobian_norm_matches_jax_jacobian(trained):
    """Exact: jax.jacobian of the outputs with respect to the input representation, its
    Frobenius norm squared over the examples. Every output basis vector as a probe gives it
    (rtol 1e-5); Gaussian probes' estimate of the squared norm lies within 4 SE."""
    run, state, diag = trained
    x = run.task.inputs(batch_of(run, state))
    h, stats = run.model.apply(state.params, x, method=SequenceModel.embed)

    def fn(h):
        return run.model.apply(state.params, h, stats, method=SequenceModel.from_embedding)

    jac = np.asarray(jax.jacobian(fn)(h), np.float64)
    exact_sq = np.sum(jac**2) / x.shape[0]
    out_shape = fn(h).shape
    basis = jnp.eye(math.prod(out_shape)).reshape(-1, *out_shape)
    sq_norms = jax.jit(lambda v: diagnostics.vjp_sq_norms(fn, h, v))
    np.testing.assert_allclose(float(jnp.sum(sq_norms(basis))) / x.shape[0], exact_sq,
                               rtol=1e-5)
    probes = jax.random.normal(jax.random.PRNGKey(3), (PROBES, *out_shape))
    samples = np.asarray(sq_norms(probes), np.float64) / x.shape[0]
    se = samples.std(ddof=1) / math.sqrt(PROBES)
    assert abs(diag["input_jacobian_norm"] ** 2 - exact_sq) < 4 * se


def numpy_smoothness(table: np.ndarray) -> float:
    p = table.shape[0]
    power = np.sum(np.abs(np.fft.fft2(table, axes=(0, 1))) ** 2, -1)
    power[0, 0] = 0.0
    k = np.minimum(np.arange(p), p - np.arange(p))
    low = (k[:, None] <= p // 4) & (k[None, :] <= p // 4)
    return float(power[low].sum() / power.sum())


def test_spectral_smoothness_matches_numpy_fft(trained):
    """Exact: the answer logits placed at [a, b] by reading a and b off each input row, then
    numpy's FFT (rtol 1e-4); and known functions: a lowest-frequency cosine scores 1, one at
    the highest frequency 0, a constant 1."""
    run, state, diag = trained
    p = run.task.cfg.p
    x = np.asarray(run.task.all_x_Mx4)
    logits = np.asarray(run.model.apply(state.params, jnp.asarray(x)))[:, -1, :p]
    table = np.zeros((p, p, p))
    table[x[:, 0], x[:, 2]] = logits
    np.testing.assert_allclose(diag["spectral_smoothness"], numpy_smoothness(table), rtol=1e-4)
    a = np.arange(11)[:, None, None] * np.ones((1, 11, 2))
    f = diagnostics.spectral_smoothness_of
    assert float(f(jnp.asarray(np.cos(2 * np.pi * a / 11)))) == pytest.approx(1.0)
    assert float(f(jnp.asarray(np.cos(2 * np.pi * 5 * a / 11)))) == pytest.approx(0.0, abs=1e-6)
    # a float32 FFT leaves ~eps32 in the non-constant bins: 1 to rounding, as the cosines
    assert float(f(jnp.ones((11, 11, 2)))) == pytest.approx(1.0, abs=1e-6)
    noise = np.random.default_rng(0).normal(size=(11, 11, 3))
    assert float(f(jnp.asarray(noise))) == pytest.approx(numpy_smoothness(noise), rel=1e-4)


def test_norms_match_numpy(trained):
    """Gradient norm, per-module weight norms and the representation norm in numpy; the
    representation read by Flax's capture_intermediates (the backbone's own output), not by
    SequenceModel.features (rtol 1e-5)."""
    run, state, diag = trained
    b = batch_of(run, state)
    g = jax.grad(lambda p: run.task.loss(run.model.apply(p, run.task.inputs(b)), b))(
        state.params)
    np.testing.assert_allclose(diag["grad_norm"], np.linalg.norm(ravel_pytree(g)[0]), rtol=1e-5)
    flat = traverse_util.flatten_dict(state.params["params"], sep="/")
    modules = {k.rsplit("/", 1)[0] for k in flat}
    assert {k for k in diag if k.startswith("weight_norm/")} == {f"weight_norm/{m}"
                                                                 for m in modules}
    for m in modules:
        want = math.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for k, v in flat.items()
                             if k.rsplit("/", 1)[0] == m))
        np.testing.assert_allclose(diag[f"weight_norm/{m}"], want, rtol=1e-5)
    _, inter = run.model.apply(state.params, run.task.inputs(b), capture_intermediates=True,
                               mutable=["intermediates"])
    h = np.asarray(inter["intermediates"]["backbone"]["__call__"][0][0], np.float64)
    np.testing.assert_allclose(diag["representation_norm"],
                               math.sqrt(np.mean(np.sum(h**2, -1))), rtol=1e-5)


def test_adam_statistics_match_numpy_adam(trained):
    """The moments read from the optimizer state by position (chain: clip, then Adam), the
    statistics and the next update written out in numpy: clip, moment update, bias
    correction, m / (sqrt(v) + eps); ratio to ||wd * p|| on the matrices (rtol 1e-5)."""
    run, state, diag = trained
    t = run.cfg.train
    adam = state.opt_state[1]
    count = int(adam.count)
    mu = [np.asarray(x, np.float64) for x in jax.tree.leaves(adam.mu)]
    nu = [np.asarray(x, np.float64) for x in jax.tree.leaves(adam.nu)]
    root = [np.sqrt(v / (1 - t.b2**count)) for v in nu]
    n = sum(r.size for r in root)
    sqrt_v = sum(r.sum() for r in root) / n
    snr = sum((np.abs(m / (1 - t.b1**count)) / (r + 1e-8)).sum()
              for m, r in zip(mu, root, strict=True)) / n
    lr_t = t.lr * float(steps.lr_multiplier(state.step, run.hparams))
    np.testing.assert_allclose(diag["adam_sqrt_v"], sqrt_v, rtol=1e-5)
    np.testing.assert_allclose(diag["adam_snr"], snr, rtol=1e-5)
    np.testing.assert_allclose(diag["adam_eff_lr"], lr_t / (sqrt_v + 1e-8), rtol=1e-5)
    b = batch_of(run, state)
    g = jax.grad(lambda p: run.task.loss(run.model.apply(p, run.task.inputs(b)), b))(
        state.params)
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(g)[0]]
    g = [np.asarray(x, np.float64) for x in jax.tree.leaves(g)]
    gnorm = math.sqrt(sum(np.sum(x**2) for x in g))
    g = [x * min(1.0, t.clip_norm / gnorm) for x in g]
    c = count + 1
    u = [(t.b1 * m + (1 - t.b1) * x) / (1 - t.b1**c) /
         (np.sqrt((t.b2 * v + (1 - t.b2) * x**2) / (1 - t.b2**c)) + 1e-8)
         for m, v, x in zip(mu, nu, g, strict=True)]
    p = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
    decayed = [x.ndim >= 2 and "embedding" not in path for x, path in zip(p, paths, strict=True)]
    un = math.sqrt(sum(np.sum(x**2) for x, d in zip(u, decayed, strict=True) if d))
    pn = math.sqrt(sum(np.sum(x**2) for x, d in zip(p, decayed, strict=True) if d))
    np.testing.assert_allclose(diag["update_decay_ratio"], un / (t.weight_decay * pn), rtol=1e-4)
    hp0 = run.hparams._replace(weight_decay=jnp.float32(0.0))
    zero = diagnostics.compute(state, run.task, hp0, spec=run.spec, names=("adam",), n_probes=1)
    assert math.isnan(float(zero["update_decay_ratio"]))


def test_loop_reports_diagnostics_at_their_interval():
    """diag/<key> appear at multiples of diagnostics_every and at the last step, nowhere
    else, with the values the state gives."""
    cfg = tiny_cfg(**{"train.steps": 9, "train.diagnostics": ["grad_norm", "weight_norms"],
                      "train.diagnostics_every": 6, "train.diagnostics_probes": 4})
    seen = []
    run = Run(cfg)
    run.train(run.init_state(), lambda m, st: seen.append(
        (m["step"], {k: v for k, v in m.items() if k.startswith("diag/")}, run.diagnostics(st))))
    assert [(s, "diag/grad_norm" in d, len(d) > 1) for s, d, _ in seen] == [
        (3, False, False), (6, True, True), (9, True, True)]
    for _, reported, again in seen[1:]:
        assert reported == again


# ---- routing regularizers and metrics ---------------------------------------------------------

H = 4


def gates(rows) -> jnp.ndarray:
    return jnp.asarray(np.asarray(rows, np.float32)[:, None, :])  # (B, L=1, H)


def np_entropy(g):
    return float(np.mean(-np.sum(np.where(g > 0, g * np.log(np.where(g > 0, g, 1)), 0), -1)))


def np_sparsity(g):
    h = g.shape[-1]
    return float(np.mean((np.abs(g).sum(-1) / np.sqrt((g**2).sum(-1)) - 1) / (np.sqrt(h) - 1)))


def np_gini(g):
    u = g.mean(0)
    return float(np.abs(u[:, None] - u[None, :]).sum() / (2 * len(u) * u.sum()))


def np_head_util(g):
    u = g.mean(0)
    return float(-np.sum(np.where(u > 0, u * np.log(np.where(u > 0, u, 1)), 0)) / np.log(len(u)))


@pytest.mark.parametrize("rows,want", [
    # uniform gates: maximal entropy, no sparsity, balanced usage
    ([[1 / H] * H] * 3, {"entropy": math.log(H), "sparsity": 1.0, "gini": 0.0, "head_util": 1}),
    # every example on head 0: sharp, but the whole load on one head
    ([[1, 0, 0, 0]] * 3, {"entropy": 0.0, "sparsity": 0.0, "gini": (H - 1) / H,
                          "head_util": 0.0}),
    # each example on its own head: sharp and balanced
    (np.eye(H).tolist(), {"entropy": 0.0, "sparsity": 0.0, "gini": 0.0, "head_util": 1.0}),
])
def test_regularizers_on_known_gates(rows, want):
    g = gates(rows)
    for name in ("entropy", "sparsity", "gini"):
        assert float(routing.REGULARIZERS[name](g)) == pytest.approx(want[name], abs=1e-5), name
    assert float(routing.head_util(g)) == pytest.approx(want["head_util"], abs=1e-5)


def test_regularizers_match_numpy_on_random_gates():
    g = np.random.default_rng(1).dirichlet(np.ones(H) * 0.7, size=16).astype(np.float32)
    for fn, ref in ((routing.entropy, np_entropy), (routing.sparsity, np_sparsity),
                    (routing.gini, np_gini), (routing.head_util, np_head_util)):
        np.testing.assert_allclose(float(fn(gates(g))), ref(g.astype(np.float64)), rtol=1e-5)


def test_regularizer_gradients_push_the_way_they_should():
    """A gradient step on the gate logits lowers each penalty; entropy and sparsity sharpen
    each example's gate (mean max gate rises), gini evens the heads' usage (its spread falls)."""
    logits = jax.random.normal(jax.random.PRNGKey(0), (32, 1, H)) + jnp.array([1.0, 0, 0, 0])
    for name in ("entropy", "sparsity", "gini"):
        fn = lambda z, name=name: routing.REGULARIZERS[name](jax.nn.softmax(z, -1))  # noqa
        after = logits - 0.5 * jax.grad(fn)(logits)
        assert float(fn(after)) < float(fn(logits)), name
        p0, p1 = jax.nn.softmax(logits, -1), jax.nn.softmax(after, -1)
        if name == "gini":
            spread = lambda p: float(jnp.ptp(p.mean((0, 1))))  # noqa: E731
            assert spread(p1) < spread(p0)
        else:
            assert float(p1.max(-1).mean()) > float(p0.max(-1).mean()), name


def test_top_k_keeps_k_renormalised_gates():
    p = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(2), (5, 3, H)), -1)
    k2 = np.asarray(top_k_gates(p, 2))
    assert ((k2 > 0).sum(-1) == 2).all()
    np.testing.assert_allclose(k2.sum(-1), 1.0, rtol=1e-6)
    pn = np.asarray(p)
    kept = np.sort(pn, -1)[..., -2:]
    np.testing.assert_allclose(np.sort(k2, -1)[..., -2:], kept / kept.sum(-1, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(top_k_gates(p, 0)), pn)


def test_training_loss_is_task_loss_plus_weighted_regularizer():
    """The step's loss with train.route_reg = entropy at weight w equals the task loss plus w
    times the mean gate entropy, both computed here from the model's sown gates."""
    cfg = tiny_cfg(**{"train.route_reg": "entropy", "train.route_reg_weight": 0.7})
    run = Run(cfg)
    state = run.init_state()
    b = run.task.sample(jax.random.fold_in(state.data_key, 0), 1)
    out, inter = run.model.apply(state.params, run.task.inputs(b), mutable=["intermediates"])
    (g,) = inter["intermediates"]["backbone"]["routed_0"]["gate"]
    want = float(run.task.loss(out, b)) + 0.7 * np_entropy(np.asarray(g, np.float64)[:, 0])
    _, m = steps.train_steps(state, run.task, run.hparams, spec=run.spec, n_steps=1)  # donates
    np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5)


def test_routed_model_reports_route_metrics_and_others_do_not():
    run = Run(tiny_cfg())
    metrics, _ = run.evaluate(run.init_state())
    assert 0 <= metrics["route_entropy"] <= math.log(2) + 1e-6
    assert 0 <= metrics["head_util"] <= 1 + 1e-6
    mlp = Run(tiny_cfg(**{"model.backbone": "mlp"}))
    assert "route_entropy" not in mlp.evaluate(mlp.init_state())[0]


@pytest.mark.parametrize("over,field", [
    ({"train.route_reg": "l1"}, "route_reg"),
    ({"train.route_reg_weight": -0.1}, "route_reg_weight"),
    ({"train.route_reg": "entropy", "model.backbone": "mlp"}, "route_reg"),
    ({"train.diagnostics": ["hessian"]}, "diagnostics"),
    ({"train.diagnostics": ["grad_norm", "grad_norm"]}, "diagnostics"),
    ({"train.diagnostics": ["grad_norm"], "train.diagnostics_every": 4}, "diagnostics_every"),
    ({"train.diagnostics_every": 3}, "diagnostics_every"),
    ({"train.diagnostics_probes": 0}, "diagnostics_probes"),
    ({"model.n_routes": 0}, "n_routes"),
    ({"model.route_top_k": 3}, "route_top_k"),
])
def test_bad_routing_and_diagnostics_config_names_the_field(over, field):
    with pytest.raises(ValueError, match=field):
        tiny_cfg(**over)
    with pytest.raises(ValueError, match="spectral_smoothness"):
        replace(RunConfig(), **{"train.diagnostics": ["spectral_smoothness"]})
