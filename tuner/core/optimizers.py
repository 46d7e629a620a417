"""Optimizer name -> update direction, and which parameters take weight decay.

Every update is ``p <- p - lr_t * (u + wd * mask * p)`` with ``lr_t`` and ``wd`` traced (one
compile per cell). An :class:`~tuner.core.optimizer_base.Optimizer` is the pair (init, apply)
the step calls, and :func:`~tuner.core.optimizer_base.decay_mask` the ``mask``; most are a
direction ``u`` (a static ``optax.GradientTransformation`` without learning rate) applied leaf by
leaf (:func:`per_leaf`), so adding one is a table entry (``train.optimizer`` picks it).

- ``adamw``: global-norm clip + Adam moments (decoupled decay comes from the trainer).
- ``adamw_flat``: the same update computed on one flat vector of all parameters
  (:mod:`tuner.core.flat_adamw`): a few large kernels instead of several per parameter leaf.
  Its optimizer state is two flat vectors, so an ``adamw`` checkpoint does not restore into it.
- ``muon``: Newton-Schulz orthogonalized momentum (``optax.contrib.scale_by_muon``) on the 2-D
  weight matrices, Adam on everything else (embedding tables, biases, norm scales, and kernels
  of other ranks), as Muon's authors prescribe. Each Muon update is rescaled to an RMS of 0.2,
  the typical RMS of an Adam update (Liu et al. 2025, "Muon is scalable for LLM training"), so
  one learning-rate range serves both groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from tuner.core import config, flat_adamw
from tuner.core.optimizer_base import Optimizer, decay_mask, is_embedding

MUON_RMS = 0.2  # RMS each Muon update is scaled to (about that of an Adam update)


def _muon_labels(params) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, p: "muon" if p.ndim == 2 and not is_embedding(path) else "adam", params)


def _muon_dims(updates) -> Any:
    """Every leaf Muon sees is a 2-D (in, out) matrix; the rest are partition's MaskedNodes.

    Passed explicitly because ``scale_by_muon``'s default (None) cannot be mapped against the
    masked tree that ``optax.partition`` hands it (optax 0.2.8).
    """
    masked = lambda x: isinstance(x, optax.transforms.MaskedNode)  # noqa: E731
    return jax.tree.map(lambda u: u if masked(u) else optax.contrib.MuonDimensionNumbers(),
                        updates, is_leaf=masked)


def _rescale_rms(target: float) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        del params
        return jax.tree.map(
            lambda u: u * (target / (jnp.sqrt(jnp.mean(u.astype(jnp.float32) ** 2)) + 1e-12)),
            updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def per_leaf(transform: optax.GradientTransformation) -> Optimizer:
    """An optax direction applied leaf by leaf with decoupled, masked weight decay."""

    def apply(grads, state, params, scale, weight_decay):
        updates, state = transform.update(grads, state, params)
        params = jax.tree.map(
            lambda p, u, m: p + scale * (u + jnp.where(m, weight_decay, 0.0) * p),
            params, updates, decay_mask(params))
        return params, state, optax.tree.norm(grads)

    return Optimizer(transform.init, apply)


def adamw_direction(b1: float, b2: float, clip_norm: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.scale_by_adam(b1, b2))


def adamw(b1: float, b2: float, clip_norm: float) -> Optimizer:
    return per_leaf(adamw_direction(b1, b2, clip_norm))


def muon(b1: float, b2: float, clip_norm: float) -> Optimizer:
    return per_leaf(muon_direction(b1, b2, clip_norm))


def muon_direction(b1: float, b2: float, clip_norm: float) -> optax.GradientTransformation:
    """Muon on 2-D matrices (momentum ``b1``), Adam(``b1``, ``b2``) elsewhere; clipped first."""
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.partition(
            {"muon": optax.chain(
                optax.contrib.scale_by_muon(beta=b1, weight_dimension_numbers=_muon_dims),
                _rescale_rms(MUON_RMS)),
             "adam": optax.scale_by_adam(b1, b2)},
            _muon_labels))


# Muon stays per leaf: Newton-Schulz needs each matrix in its own shape
OPTIMIZERS: dict[str, Callable[[float, float, float], Optimizer]] = {
    "adamw": adamw,
    "adamw_flat": flat_adamw.optimizer,
    "muon": muon,
}
if tuple(OPTIMIZERS) != config.OPTIMIZERS:  # config checks train.optimizer by these names
    raise ImportError(f"tuner.core.optimizers {tuple(OPTIMIZERS)} != tuner.core.config "
                      f"{config.OPTIMIZERS}")
