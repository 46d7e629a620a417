"""The model's hard requirements against independent computations: causality, patch alignment,
KV-cache generation equal to the full forward pass, chunked rollouts equal to unchunked ones."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from tolerance import assert_f32_close, forward_depth

from data import lds
from data.lds_rollout import RolloutConfig, evaluate_rollouts
from data.lds_task import LDSTask
from models.config import ModelConfig
from models.sequence_model import SequenceModel, generate

T, Y = 64, 2
TINY_DEPTH = forward_depth(n_layers=2, d_model=32, d_ff=64, seq_len=T, head_dim=16)


def tiny(patch, revin=True):
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_ff=64, patch_size=patch, revin=revin)
    model = SequenceModel(cfg, dim_y=Y)
    y = jax.random.normal(jax.random.PRNGKey(0), (2, T, Y))
    return model, model.init(jax.random.PRNGKey(1), y), y


@pytest.mark.parametrize("patch", [1, 2, 4, 8, 16, 32])
def test_causality_and_patch_alignment(patch):
    """d pred[t] / d y[u] is zero exactly when u >= (t // P) * P, computed with the Jacobian.

    So y_{t+1..T} never moves a prediction made at or before t; each position is predicted once
    (the output has one prediction per position), from strictly earlier observations, and the
    most recent allowed observation (u = cutoff - 1) does influence it (the alignment is not
    delayed by a patch).
    """
    model, params, y = tiny(patch)
    # jitted: one compile instead of 128 eager backward passes (the zeros are exact either way:
    # the causal mask's -inf gives softmax weights of exactly 0)
    jac = jax.jit(jax.jacrev(lambda v: model.apply(params, v[None])[0]))(y[0])  # (T, Y, T, Y)
    dep_TxT = np.abs(np.asarray(jac)).sum((1, 3)) > 0
    t_idx = np.arange(T)
    cutoff = (t_idx // patch) * patch
    allowed = t_idx[None, :] < cutoff[:, None]  # allowed[t, u]: u strictly before the cutoff
    assert not np.any(dep_TxT & ~allowed), "a prediction depends on an observation it may not see"
    has_past = cutoff > 0
    assert np.all(dep_TxT[has_past, cutoff[has_past] - 1])
    # the perturbation form of the same property
    for t in (patch - 1, T // 2, T - 2):
        changed = y.at[:, t + 1 :].add(3.0)
        same = cutoff <= t + 1
        np.testing.assert_array_equal(np.asarray(model.apply(params, y))[:, same],
                                      np.asarray(model.apply(params, changed))[:, same])


@pytest.mark.parametrize("patch", [1, 2, 8])
def test_kv_cache_generation_equals_full_forward(patch):
    """Each generated patch equals the full forward pass on warmup + generated-so-far."""
    model, params, y = tiny(patch)
    warm, n = 16, 32
    gen = jax.jit(generate, static_argnums=(0, 3))(model, params, y[:, :warm], n)
    full = model.apply(params, jnp.concatenate([y[:, :warm], gen], 1))
    # two programs (cached steps, one full pass) on the same inputs: a forward pass apart
    assert_f32_close(gen, full[:, warm:], TINY_DEPTH)


def test_chunked_rollouts_equal_unchunked():
    model, params, _ = tiny(2)
    task = LDSTask.create(lds.LDSConfig(dim_x=4, dim_y=Y, seq_len=T), patch_size=2)
    cfg = RolloutConfig(warmup=16, horizons=(1, 2, 8, 16), n_sequences=48)
    whole = evaluate_rollouts(params, task, model, cfg, chunk=48)
    chunked = evaluate_rollouts(params, task, model, cfg, chunk=10)
    assert whole.keys() == {f"eval/score{kind}_t+{h}" for h in (1, 2, 8, 16)
                            for kind in ("", "_se")}
    # other batch sizes compile apart: each score is a mean over 48 sequences of rollouts 16
    # steps deep (8 forward passes at patch 2, each fed the last); its standard error on the
    # score's scale
    for k in whole:
        score = k.replace("_se", "")
        assert_f32_close(chunked[k], whole[k], 8 * TINY_DEPTH + 48, k, scale=abs(whole[score]))


def test_rollout_standard_error_matches_the_spread_over_repeats():
    """The reported Monte-Carlo standard error of a score agrees with the spread of the score
    over independent repeats (other rollout keys): their ratio is near 1 at every horizon."""
    model, params, _ = tiny(2)
    task = LDSTask.create(lds.LDSConfig(dim_x=4, dim_y=Y, seq_len=T), patch_size=2)
    repeats = [evaluate_rollouts(params, task, model, RolloutConfig(
        warmup=16, horizons=(2, 8), n_sequences=64, seed=s)) for s in range(24)]
    for h in (2, 8):
        scores = np.array([r[f"eval/score_t+{h}"] for r in repeats])
        se = np.mean([r[f"eval/score_se_t+{h}"] for r in repeats])
        assert 0.6 < scores.std(ddof=1) / se < 1.6, (h, scores.std(ddof=1), se)


@pytest.mark.parametrize("kwargs,field", [({"d_model": 30, "n_heads": 4}, "d_model"),
                                          ({"backbone": "lstm"}, "backbone"),
                                          ({"compute_dtype": "fp8"}, "compute_dtype")])
def test_bad_model_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "lds_model_golden.npz"


# Roundings along one output of the golden model (tests/tolerance.py): 416
FORWARD_DEPTH = forward_depth(n_layers=2, d_model=16, d_ff=32, seq_len=16, head_dim=8)
# Parameter init: threefry bits (exact integers) to a float, then a truncated-normal transform
# (erfinv's polynomial, ~20 roundings) and a scale.
INIT_DEPTH = 32
# The KV-cache rollout of 8 steps at patch 2: 4 forward passes, each fed the previous output.
GEN_DEPTH = 4 * FORWARD_DEPTH


def golden_model():
    golden = np.load(GOLDEN)
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_ff=32, patch_size=2)
    return SequenceModel(cfg, dim_y=3), golden


def compare_to_golden(model, params, golden) -> None:
    """Raises AssertionError unless the parameter tree, outputs and rollout match the golden
    snapshot to float32 rounding (``tests/tolerance.py``; depths above)."""
    y = jnp.asarray(golden["y"])
    flat = traverse_util.flatten_dict(params, sep="/")
    want = {k.removeprefix("param:"): golden[k] for k in golden.files if k.startswith("param:")}
    assert sorted(flat) == sorted(want)
    for k, v in flat.items():
        assert v.shape == want[k].shape, k
        assert_f32_close(v, want[k], INIT_DEPTH, err_msg=k)
    assert_f32_close(model.apply(params, y), golden["out"], FORWARD_DEPTH)
    gen = jax.jit(generate, static_argnums=(0, 3))(model, params, y[:, :8], 8)
    assert_f32_close(gen, golden["gen"], GEN_DEPTH)


def test_lds_model_matches_golden():
    """The LDS model's parameter tree (paths, shapes, init values under one key), its outputs and
    its KV-cache rollout equal a stored snapshot to float32 rounding, so checkpoints and results
    stay valid across refactors of models/. Not bit for bit: XLA's CPU code differs between
    processors (on an AMD EPYC 62 of 96 outputs differed by up to 4.8e-7, 1.8 eps32 x the
    outputs' scale 2.3); the tolerance is ~40x that. Regenerate the fixture only for an intended
    change."""
    model, golden = golden_model()
    compare_to_golden(model, model.init(jax.random.PRNGKey(1), jnp.asarray(golden["y"])), golden)


def test_golden_tolerance_passes_rounding_and_catches_a_real_change():
    """The comparison above can fail: every drawn weight moved by one ulp (what another CPU's
    rounding does) passes; one weight changed by 1e-3, or another init seed, does not. (Zero
    biases and unit norm scales are exact constants on any CPU, and compared as such.)"""
    model, golden = golden_model()
    params = model.init(jax.random.PRNGKey(1), jnp.asarray(golden["y"]))
    one_ulp = jax.tree.map(lambda a: np.where(
        (a == 0) | (a == 1), a, np.nextafter(np.asarray(a), np.float32(np.inf))), params)
    compare_to_golden(model, one_ulp, golden)
    flat = traverse_util.flatten_dict(params, sep="/")
    key = "params/backbone/block_1/mlp/down/kernel"
    changed = dict(flat, **{key: flat[key].at[3, 5].add(1e-3)})
    with pytest.raises(AssertionError):
        compare_to_golden(model, traverse_util.unflatten_dict(changed, sep="/"), golden)
    # the forward pass alone (parameters compared separately) also sees the change
    with pytest.raises(AssertionError):
        assert_f32_close(model.apply(traverse_util.unflatten_dict(changed, sep="/"),
                                     jnp.asarray(golden["y"])), golden["out"], FORWARD_DEPTH)
    with pytest.raises(AssertionError):
        compare_to_golden(model, model.init(jax.random.PRNGKey(2), jnp.asarray(golden["y"])),
                          golden)


def test_registry_names_are_the_configs():
    """Every name ModelConfig accepts has a part to build, and every part a name ModelConfig
    accepts (config validates against its own tuples, without importing the models)."""
    from models import attention, block, config, registry

    assert tuple(registry.INPUT_LAYERS) == config.INPUT_LAYERS
    assert tuple(registry.BACKBONES) == config.BACKBONES
    assert tuple(registry.HEADS) == config.HEADS
    assert tuple(attention.ATTENTIONS) == config.ATTENTIONS
    assert (*block.MLPS, "none") == config.MLPS
    assert tuple(block.NORMS) == config.NORMS


def test_model_config_imports_no_jax():
    """Building a config (e.g. for a CLI's --help) loads neither JAX nor Flax."""
    script = ("import sys; from models.config import ModelConfig; ModelConfig(backbone='toy');"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).parent.parent, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout


def test_generate_method_is_the_module_function():
    """``model.generate`` rolls out exactly as ``models.sequence_model.generate``."""
    model, params, y = tiny(2)
    np.testing.assert_array_equal(np.asarray(model.generate(params, y[:, :8], 8)),
                                  np.asarray(generate(model, params, y[:, :8], 8)))
