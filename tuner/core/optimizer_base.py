"""What every optimizer shares: the (init, apply) contract the step calls and which parameters
take weight decay.

Its own module so that :mod:`tuner.core.optimizers` (the name -> optimizer table) and the
optimizers it lists (e.g. :mod:`tuner.core.flat_adamw`) both import it, and never each other
the wrong way round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

EMBEDDING_NAMES = ("embedding",)  # leaf names of token/position tables (flax nn.Embed's param)


class Optimizer(NamedTuple):
    """What the training step calls: ``init(params) -> state`` and ``apply(grads, state, params,
    scale, weight_decay) -> (params, state, grad_norm)``, where ``scale = -lr_t`` (traced) and
    ``grad_norm`` is the unclipped global norm the step reports."""

    init: Callable[[Any], Any]
    apply: Callable[[Any, Any, Any, jax.Array, jax.Array], tuple[Any, Any, jax.Array]]


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def is_embedding(path) -> bool:
    """Whether the leaf at ``path`` (a tree path) is a token/position table."""
    return _leaf_name(path) in EMBEDDING_NAMES


def decay_mask(params) -> Any:
    """Weight decay on weight matrices only: not on embedding tables, biases or norm scales.

    Matrices are leaves of rank >= 2; embedding tables are excluded by name (``embedding``,
    what ``nn.Embed`` calls its table), since decaying them shrinks rare tokens' vectors toward
    zero for no regularizing benefit. The LDS model has no embedding table, so it decays exactly
    what it always did (every kernel).
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p.ndim >= 2 and not is_embedding(path), params)
