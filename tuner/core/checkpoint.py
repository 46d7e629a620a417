"""Save and resume a run: the full train state (orbax) plus its :class:`Progress` (JSON), so a
resumed run continues exactly (params, optimizer moments, step and data key are in the state;
last metrics and reached milestones in the progress). One pair for every caller: the one-run
CLI, a search trial and a cell's stacked finals."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from tuner.core.loop import Progress

_STATE = "state"
_META = "meta.json"


def save(directory: str | Path, state: Any, progress: Progress) -> Path:
    """Writes ``state`` and ``progress`` under ``directory`` (created; must hold no state)."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / _STATE, jax.device_get(state))
        ckptr.wait_until_finished()
    step = int(jax.numpy.ravel(state.step)[0])
    (directory / _META).write_text(json.dumps({"step": step,
                                               "progress": dataclasses.asdict(progress)}))
    return directory


def save_replacing(directory: str | Path, state: Any, progress: Progress) -> Path:
    """:func:`save` over an existing checkpoint: written beside it, then swapped in, so a kill
    at any moment leaves one whole checkpoint (the old or the new)."""
    directory = Path(directory).absolute()
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp, state, progress)
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def read_progress(directory: str | Path) -> Progress:
    """The progress saved with a checkpoint, without its state: a population's state holds
    only its live members (``progress.alive``), so their number shapes the state to read."""
    directory = Path(directory).absolute()
    if not (directory / _META).exists() and directory.with_name(directory.name + ".old").exists():
        directory = directory.with_name(directory.name + ".old")  # killed mid-swap
    return Progress(**json.loads((directory / _META).read_text())["progress"])


def restore(directory: str | Path, like: Any) -> tuple[Any, Progress]:
    """Reads a state shaped like ``like`` (a freshly initialized one) and its progress."""
    directory = Path(directory).absolute()
    if not (directory / _STATE).exists() and directory.with_name(directory.name + ".old").exists():
        directory = directory.with_name(directory.name + ".old")  # killed mid-swap
    with ocp.StandardCheckpointer() as ckptr:
        raw = ckptr.restore(directory / _STATE, jax.device_get(like))
    state = jax.tree.map(lambda r, ref: jax.numpy.asarray(r, ref.dtype), raw, like)
    return state, Progress(**json.loads((directory / _META).read_text())["progress"])
