"""System generation and sampling, checked against their definitions (SPEC section 1)."""

import dataclasses

import jax
import numpy as np
import pytest

from data import lds
from data.lds_rollout import RolloutConfig
from data.lds_task import LDSTask
from models.config import ModelConfig
from tuner.core.config import RunConfig


def eig_sorted(a):
    ev = np.linalg.eigvals(a)
    return ev[np.lexsort((ev.imag, ev.real))]


@pytest.mark.parametrize("dim_x,lam,seed", [(64, 0.9, 0), (7, 0.99, 5), (2, 0.36, 1)])
def test_dense_and_diagonal_share_spectrum_in_range(dim_x, lam, seed):
    base = lds.LDSConfig(dim_x=dim_x, dim_y=1, lambda_val=lam, system_seed=seed)
    a_diag, c_diag = lds.make_system_np(dataclasses.replace(base, structure="diagonal"))
    a_dense, c_dense = lds.make_system_np(dataclasses.replace(base, structure="dense"))
    np.testing.assert_allclose(eig_sorted(a_dense), eig_sorted(a_diag), atol=1e-9)
    np.testing.assert_array_equal(c_dense, c_diag)
    mod = np.abs(np.linalg.eigvals(a_diag))
    assert mod.min() >= lam / 2 - 1e-12 and mod.max() <= lam + 1e-12
    assert np.count_nonzero(a_dense) == dim_x * dim_x  # really dense
    assert np.count_nonzero(a_diag) <= 2 * dim_x  # 2x2 blocks only


@pytest.mark.parametrize("seed,lam", [(0, 0.96), (3, 0.99)])
def test_dense_a_is_the_same_for_every_dim_y(seed, lam):
    """Experiment 4 compares dim_y on one system: D, S and so A must not depend on C's shape,
    while dense and diagonal keep sharing eigenvalues and C at each dim_y."""
    cfgs = [lds.LDSConfig(dim_x=64, dim_y=y, lambda_val=lam, system_seed=seed)
            for y in (1, 2, 4, 8)]
    dense = [lds.make_system_np(c)[0] for c in cfgs]
    diag = [lds.make_system_np(dataclasses.replace(c, structure="diagonal")) for c in cfgs]
    sims = [lds.similarity(c) for c in cfgs]
    for a, (d, c_diag), s, cfg in zip(dense, diag, sims, cfgs, strict=True):
        np.testing.assert_array_equal(a, dense[0])
        np.testing.assert_array_equal(d, diag[0][0])
        np.testing.assert_array_equal(s, sims[0])
        np.testing.assert_allclose(a, s @ d @ np.linalg.inv(s), atol=1e-12)
        np.testing.assert_array_equal(lds.make_system_np(cfg)[1], c_diag)
    assert np.linalg.cond(sims[0]) <= 2 + 1e-9


def test_scalar_is_lambda_identity_and_c_has_fan_out_variance():
    a, c = lds.make_system_np(lds.LDSConfig(dim_x=256, dim_y=64, structure="scalar",
                                            lambda_val=0.7))
    np.testing.assert_array_equal(a, 0.7 * np.eye(256))
    np.testing.assert_allclose(c.var(), 1 / 64, rtol=0.05)  # C_ij ~ N(0, 1/dim_y)


def test_sample_follows_the_recursion():
    """Each y_t equals C x_t for the recursion driven by the same noise, with x_0 = 0."""
    cfg = lds.LDSConfig(dim_x=5, dim_y=2, seq_len=9, structure="dense", system_seed=2)
    system = lds.make_system(cfg)
    key = jax.random.PRNGKey(4)
    y = np.asarray(lds.sample(system, key, 3, 9))
    noise = np.asarray(system.sigma * jax.random.normal(key, (9, 3, 5)))
    a, c = np.asarray(system.A, np.float64), np.asarray(system.C, np.float64)
    x = np.zeros((3, 5))
    for t in range(9):
        x = x @ a.T + noise[t]
        np.testing.assert_allclose(y[:, t], x @ c.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,field", [
    ({"structure": "banded"}, "structure"), ({"lambda_val": 1.0}, "lambda_val"),
    ({"lambda_val": 0.0}, "lambda_val"), ({"dim_y": 65}, "dim_y"), ({"sigma": 0.0}, "sigma")])
def test_bad_lds_config_names_field_and_allowed_values(kwargs, field):
    with pytest.raises(ValueError, match=field) as err:
        lds.LDSConfig(**kwargs)
    if field == "structure":
        assert "dense" in str(err.value) and "diagonal" in str(err.value)


def test_patch_not_dividing_sequence_fails_at_construction():
    with pytest.raises(ValueError, match=r"patch_size=8.*seq_len=100.*allowed: \[1, 2, 4\]"):
        RunConfig(data=lds.LDSConfig(seq_len=100), model=ModelConfig(patch_size=8))
    with pytest.raises(ValueError, match=r"patch_size=3.*allowed: 1, 2, 4, 8, 16, 32"):
        ModelConfig(patch_size=3)
    with pytest.raises(ValueError, match=r"patch_size=8.*seq_len=100.*allowed: \[1, 2, 4\]"):
        LDSTask.create(lds.LDSConfig(seq_len=100), patch_size=8)  # the one check, both ways


def test_rollout_not_in_whole_patches_fails_at_construction():
    """The LDS task's check_config: warmup and the longest horizon are whole patches."""
    four = ModelConfig(patch_size=4)
    for rollout in (RolloutConfig(warmup=18), RolloutConfig(horizons=(4, 6))):
        with pytest.raises(ValueError, match=r"rollout.warmup=.*multiples of model.patch_size=4"):
            RunConfig(model=four, rollout=rollout)
    RunConfig(model=four, rollout=RolloutConfig(warmup=16, horizons=(1, 2, 8)))
    # another task's run does not read the LDS sections
    RunConfig(model=four, rollout=RolloutConfig(warmup=18), task="bigram")


@pytest.mark.parametrize("structure,lam", [("dense", 0.9), ("diagonal", 0.99), ("scalar", 0.5)])
def test_parallel_sampler_equals_the_recursion(structure, lam):
    """The convolution sampler gives the recursion's sequences for the same key."""
    cfg = lds.LDSConfig(dim_x=6, dim_y=2, seq_len=48, structure=structure, lambda_val=lam)
    system = lds.make_system(cfg)
    a, c = lds.make_system_np(cfg)
    impulse = jax.numpy.asarray(lds.impulse_response(lds.System(a, c, 1.0), 48), "float32")
    key = jax.random.PRNGKey(3)
    np.testing.assert_allclose(np.asarray(lds.sample_parallel(system, impulse, key, 5)),
                               np.asarray(lds.sample(system, key, 5, 48)), rtol=1e-4, atol=1e-4)
