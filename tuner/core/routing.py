"""Routing regularizers and metrics of gated models (``model.backbone: routed``).

A gate is a per-example distribution g over H heads (models/routed.py sows every layer's
softmax, shape (B, L, H)). Each quantity below is computed per layer and averaged over layers;
"examples" are all (batch, position) pairs of a layer.

Regularizers (``train.route_reg``; the loss becomes ``task loss + train.route_reg_weight * R``,
the weight traced so a grid over it shares one compile):

- ``entropy``: mean per-example gate entropy ``-sum_h g_h log g_h`` (nats; 0 one-hot, log H
  uniform). Minimising it sharpens each example's routing.
- ``sparsity``: mean per-example ``1 - Hoyer(g)``, with Hoyer's sparseness
  ``(sqrt(H) - |g|_1 / |g|_2) / (sqrt(H) - 1)`` (Hoyer 2004, "Non-negative matrix factorization
  with sparseness constraints", JMLR 5): 0 one-hot, 1 uniform. Also sharpens, but scale-free
  and through the L2 norm instead of logs, so it stays smooth at one-hot gates where the
  entropy's gradient blows up.
- ``gini``: the Gini coefficient of head usage u_h = mean over examples of g_h,
  ``sum_{h,h'} |u_h - u_h'| / (2 H sum_h u_h)`` (0 all heads used equally, (H-1)/H all traffic
  on one head). The load-balance kind, not the per-example impurity ``1 - sum g^2``: that would
  be a third sharpener; penalising unequal usage is the standard counterweight to routing
  collapse (cf. the Switch Transformer's balance loss), so the three span both directions.

Metrics (``eval/route_entropy``, ``eval/head_util``, on the evaluation data):

- ``route_entropy``: the ``entropy`` regularizer's value (nats).
- ``head_util``: entropy of the head usage u divided by log H: 1 when every head gets the same
  share of the examples, 0 when one head gets all of them (1 for H = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from models.config import GATED_BACKBONES
from models.routed import gates_of
from tuner.core import config

_EPS = 1e-12  # inside logs and divisions: a gate of exactly 0 (top-k) contributes 0 log 0 = 0


def _examples(gate_BxLxH: jax.Array) -> jax.Array:
    return gate_BxLxH.reshape(-1, gate_BxLxH.shape[-1]).astype(jnp.float32)


def entropy(gate_BxLxH: jax.Array) -> jax.Array:
    """Mean per-example gate entropy (nats)."""
    g = _examples(gate_BxLxH)
    return jnp.mean(-jnp.sum(g * jnp.log(g + _EPS), -1))


def sparsity(gate_BxLxH: jax.Array) -> jax.Array:
    """Mean per-example 1 - Hoyer sparseness (0 one-hot, 1 uniform; 0 for H = 1)."""
    g = _examples(gate_BxLxH)
    h = g.shape[-1]
    if h == 1:
        return jnp.zeros((), jnp.float32)
    ratio = jnp.sum(jnp.abs(g), -1) / (jnp.sqrt(jnp.sum(g**2, -1)) + _EPS)
    return jnp.mean((ratio - 1.0) / (math.sqrt(h) - 1.0))


def gini(gate_BxLxH: jax.Array) -> jax.Array:
    """Gini coefficient of the heads' usage (0 balanced, (H-1)/H one head)."""
    u_H = jnp.mean(_examples(gate_BxLxH), 0)
    h = u_H.shape[0]
    return jnp.sum(jnp.abs(u_H[:, None] - u_H[None, :])) / (2.0 * h * jnp.sum(u_H) + _EPS)


def head_util(gate_BxLxH: jax.Array) -> jax.Array:
    """Entropy of the heads' usage / log H (1 balanced, 0 one head; 1 for H = 1)."""
    u_H = jnp.mean(_examples(gate_BxLxH), 0)
    h = u_H.shape[0]
    if h == 1:
        return jnp.ones((), jnp.float32)
    return -jnp.sum(u_H * jnp.log(u_H + _EPS)) / math.log(h)


REGULARIZERS: dict[str, Callable[[jax.Array], jax.Array] | None] = {
    "none": None,
    "entropy": entropy,
    "sparsity": sparsity,
    "gini": gini,
}

if tuple(REGULARIZERS) != config.ROUTE_REGULARIZERS:  # config checks train.route_reg by these
    raise ImportError(f"tuner.core.routing {tuple(REGULARIZERS)} != tuner.core.config "
                      f"{config.ROUTE_REGULARIZERS}")

METRICS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "route_entropy": entropy,
    "head_util": head_util,
}


def is_routed(model) -> bool:
    """Whether ``model`` (a SequenceModel) sows gates: decided by its backbone class, statically."""
    return model.cfg.backbone in GATED_BACKBONES


def metric_names(model_cfg) -> tuple[str, ...]:
    """The evaluation metrics a model of ``model_cfg`` (a ModelConfig) adds to its task's."""
    return tuple(f"eval/{m}" for m in METRICS) if model_cfg.backbone in GATED_BACKBONES else ()


def _layer_mean(fn, gates: list[jax.Array]) -> jax.Array:
    return sum(fn(g) for g in gates) / len(gates)


def apply_with_gates(model, params, x, **kwargs) -> tuple[jax.Array, list[jax.Array]]:
    """The model's outputs and every layer's gate probabilities."""
    out, state = model.apply(params, x, mutable=["intermediates"], **kwargs)
    return out, gates_of(state["intermediates"])


def regularized_loss(model, task, params, batch, rngs, reg: str, weight: jax.Array
                     ) -> jax.Array:
    """``task.loss + weight * R(gates)`` for regularizer ``reg`` (not "none")."""
    out, gates = apply_with_gates(model, params, task.inputs(batch), rngs=rngs)
    return task.loss(out, batch) + weight * _layer_mean(REGULARIZERS[reg], gates)


def metrics(model, params, x) -> dict[str, jax.Array]:
    """``METRICS`` of the gates on the inputs ``x`` (jit it)."""
    _, gates = apply_with_gates(model, params, x)
    return {name: _layer_mean(fn, gates) for name, fn in METRICS.items()}
