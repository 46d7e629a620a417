"""Save and restore the full train state (orbax) plus JSON metadata, so a resumed run continues
exactly: params, optimizer moments, step and data key are all in the state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from tuner.core.steps import TrainState

_STATE = "state"
_META = "meta.json"


def save(directory: str | Path, state: TrainState, meta: dict[str, Any]) -> Path:
    """Writes ``state`` and ``meta`` under ``directory`` (created; must not hold a state yet)."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / _STATE, jax.device_get(state))
        ckptr.wait_until_finished()
    (directory / _META).write_text(json.dumps(meta))
    return directory


def restore(directory: str | Path, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Reads a state shaped like ``like`` (a freshly initialized state) and its metadata."""
    directory = Path(directory).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        raw = ckptr.restore(directory / _STATE, jax.device_get(like))
    state = jax.tree.map(lambda r, ref: jax.numpy.asarray(r, ref.dtype), raw, like)
    return state, json.loads((directory / _META).read_text())
