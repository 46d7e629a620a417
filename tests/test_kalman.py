"""The Kalman baselines against independent computations.

The reference is exact Gaussian conditioning on the joint covariance of (y_1..y_T), built
directly from the state recursion: no Riccati recursion involved. The steady state is checked
against scipy's DARE solver, and the filter's predictions by Monte Carlo.
"""

import jax
import numpy as np
import pytest
import scipy.linalg

from data import kalman, lds


def joint_cov(a, c, sigma, seq_len):
    """Cov of the stacked (y_1..y_T), (T*Y, T*Y), from x_t = sum_s A^{t-1-s} e_s."""
    dx, dy = a.shape[0], c.shape[0]
    state_cov = []
    cov = sigma**2 * np.eye(dx)
    for _ in range(seq_len):
        state_cov.append(cov)
        cov = a @ cov @ a.T + sigma**2 * np.eye(dx)
    big = np.zeros((seq_len * dy, seq_len * dy))
    for t in range(seq_len):
        for u in range(t, seq_len):
            block = c @ np.linalg.matrix_power(a, u - t) @ state_cov[t] @ c.T  # Cov(y_u, y_t)
            big[u * dy:(u + 1) * dy, t * dy:(t + 1) * dy] = block
            big[t * dy:(t + 1) * dy, u * dy:(u + 1) * dy] = block.T
    return big


def conditional_error(big, dy, target, seen):
    """trace Cov(y_target | y_1..y_seen) (0-based target block, first ``seen`` blocks observed)."""
    tt = big[target * dy:(target + 1) * dy, target * dy:(target + 1) * dy]
    if seen == 0:
        return np.trace(tt)
    past = big[:seen * dy, :seen * dy]
    cross = big[target * dy:(target + 1) * dy, :seen * dy]
    return np.trace(tt - cross @ np.linalg.solve(past, cross.T))


CASES = [(s, lam, dy) for s in ("dense", "diagonal", "scalar") for lam in (0.5, 0.9)
         for dy in (1, 3)] + [("dense", 0.99, 2)]


def system(structure, lam, dim_y, dim_x=6, seed=3):
    cfg = lds.LDSConfig(dim_x=dim_x, dim_y=dim_y, seq_len=16, lambda_val=lam,
                        structure=structure, system_seed=seed)
    a, c = lds.make_system_np(cfg)
    return lds.System(a, c, np.float64(1.3)), cfg


@pytest.mark.parametrize("structure,lam,dim_y", CASES)
def test_one_step_mse_equals_gaussian_conditioning(structure, lam, dim_y):
    """Riccati errors equal exact conditioning on the joint covariance, at every position."""
    sys_, _ = system(structure, lam, dim_y)
    seq_len = 12
    big = joint_cov(sys_.A, sys_.C, 1.3, seq_len)
    ref = [conditional_error(big, dim_y, t, t) for t in range(seq_len)]
    np.testing.assert_allclose(kalman.one_step_mse(sys_, seq_len), ref, rtol=1e-7)
    np.testing.assert_allclose(kalman.zero_mse(sys_, seq_len),
                               [conditional_error(big, dim_y, t, 0) for t in range(seq_len)],
                               rtol=1e-10)


@pytest.mark.parametrize("structure,lam,dim_y", CASES[:4])
def test_h_step_and_patched_mse_equal_gaussian_conditioning(structure, lam, dim_y):
    sys_, _ = system(structure, lam, dim_y)
    big = joint_cov(sys_.A, sys_.C, 1.3, 16)
    warmup = 5
    got = kalman.h_step_mse(sys_, warmup, [1, 2, 4, 8])
    for h, v in got.items():
        np.testing.assert_allclose(v, conditional_error(big, dim_y, warmup + h - 1, warmup),
                                   rtol=1e-7)
    patch = 4
    ref = [conditional_error(big, dim_y, t, (t // patch) * patch) for t in range(16)]
    np.testing.assert_allclose(kalman.patched_mse(sys_, 16, patch), ref, rtol=1e-7)
    np.testing.assert_allclose(kalman.patched_mse(sys_, 16, 1), kalman.one_step_mse(sys_, 16))


@pytest.mark.parametrize("structure,lam,dim_y", [("dense", 0.9, 2), ("diagonal", 0.96, 1),
                                                  ("dense", 0.5, 4)])
def test_steady_state_matches_scipy_dare(structure, lam, dim_y):
    """Far into the sequence, P_{t+1|t} converges to the DARE solution of the same filter."""
    sys_, _ = system(structure, lam, dim_y, dim_x=8)
    q = 1.3**2 * np.eye(8)
    p_inf = scipy.linalg.solve_discrete_are(sys_.A.T, sys_.C.T, q, 1e-10 * np.eye(dim_y))
    p_last = kalman.predicted_covariances(sys_, 400)[-1]
    np.testing.assert_allclose(p_last, p_inf, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kalman.one_step_mse(sys_, 400)[-1],
                               np.trace(sys_.C @ p_inf @ sys_.C.T), rtol=1e-6)


@pytest.mark.parametrize("structure", ["dense", "diagonal"])
def test_filter_attains_expected_error_monte_carlo(structure):
    """The filter's empirical error on sampled sequences matches the Riccati expectation."""
    cfg = lds.LDSConfig(dim_x=8, dim_y=2, seq_len=40, lambda_val=0.9, structure=structure,
                        system_seed=1)
    a, c = lds.make_system_np(cfg)
    exact = lds.System(a, c, np.float64(1.0))
    y = np.asarray(lds.sample(lds.make_system(cfg), jax.random.PRNGKey(0), 20000, 40), np.float64)
    err = ((kalman.predict(exact, y) - y) ** 2).sum(-1)
    expected = kalman.one_step_mse(exact, 40)
    # per position: within 5 standard errors; overall: within 1%
    se = err.std(0) / np.sqrt(err.shape[0])
    assert np.all(np.abs(err.mean(0) - expected) < 5 * se)
    np.testing.assert_allclose(err.mean(0).sum(), expected.sum(), rtol=0.01)
    # and the zero predictor's error E|y_t|^2
    np.testing.assert_allclose((y**2).sum(-1).mean(0).sum(), kalman.zero_mse(exact, 40).sum(),
                               rtol=0.02)
