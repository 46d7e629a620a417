"""Tolerances for float32 results of two programs that compute the same function.

XLA compiles differently per CPU (vector width, FMA contraction, reduction order) and per
program (batch size, vmap, jit or not), so two such programs agree to float32 rounding, never
bit for bit. Each rounding moves a value by at most eps32/2 of itself; ``depth`` roundings along
a result's computation add like a random walk, ~sqrt(depth) of them, and no intermediate is
larger than the array's own scale (layer norms and softmax keep activations O(scale)). Hence an
absolute tolerance ``SAFETY * eps32 * sqrt(depth) * max|reference|``: an atol, since elements
near zero carry the absolute error of their larger neighbours (a relative one fails on them);
SAFETY = 8 covers the random walk's tail and the few roundings ``depth`` leaves out. Training
multiplies ``depth`` by the steps taken (each step's error feeds the next).
"""

from __future__ import annotations

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
SAFETY = 8.0


def f32_atol(reference, depth: int, scale: float | None = None) -> float:
    """Absolute tolerance for float32 results ``depth`` roundings deep (module docstring);
    ``scale`` where the reference's own magnitude is not that of the computation (a difference
    of O(1) terms, such as a skill 1 - ratio, may be near zero)."""
    if scale is None:
        scale = float(np.max(np.abs(np.asarray(reference, np.float64))))
    return SAFETY * EPS32 * math.sqrt(depth) * scale


def forward_depth(n_layers: int, d_model: int, d_ff: int, seq_len: int, head_dim: int) -> int:
    """Roundings along one output of a pre-norm transformer's forward pass: per block the two
    layer norms' mean and variance sums (4 d_model), qkv (d_model), a score (head_dim), the
    softmax's sum and weighted sum over the positions (2 seq_len), out and mlp up (2 d_model),
    mlp down (d_ff); then embedding, final norm and head (~3 d_model)."""
    block = 4 * d_model + d_model + head_dim + 2 * seq_len + 2 * d_model + d_ff
    return n_layers * block + 3 * d_model


def train_depth(forward_depth: int, steps: int) -> int:
    """Roundings behind trained parameters: a step is the forward pass, a backward pass of
    about twice its work and the optimizer update (~3x forward), and each step starts from
    the last one's rounded result."""
    return 3 * forward_depth * steps


def assert_f32_close(actual, reference, depth: int, err_msg: str = "",
                     scale: float | None = None) -> None:
    """``actual`` equals ``reference`` to the rounding of a ``depth``-deep float32 program."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(reference), rtol=0,
                               atol=f32_atol(reference, depth, scale), err_msg=err_msg)
