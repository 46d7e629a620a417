"""A moved or copied experiment folder resumes at its new place, never at its old one.

Tune pickles our objects with the absolute paths they were made with: ``tuner.pkl`` holds the
searchers (their journal folder, the trials' compilation cache), the status file and the W&B
directory; Tune's snapshot holds each trial's config (its compilation cache). Ray re-points its
own paths (trial folders, checkpoints) when ``Tuner.restore`` is given the new place; ours are
re-pointed here. After ``mv`` the old place is gone (a journal opened there would be a new,
empty one), after ``cp -r`` it is another live copy: nothing may be opened or written there.

The folder records every root a driver took it at (:func:`take`, ``locations.json``, written
with the lock held). A driver whose root is not the last one recorded resumes a folder that was
moved or copied: while it reads the pickles (:func:`moved`), :func:`here` maps a path under any
earlier root to the same place under the current one. A trial maps its config's paths the same
way from the record (:func:`in_folder`). Only folders written since the record exists are
re-pointed: an older folder records its root at its first run here.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tuner.service.dirs import ExperimentDirs
from tuner.service.files import read_json, write_json

REMEDY = (
    "delete it and rerun the same command (the folder then counts its current place as "
    "its only one: do so only where it was not moved)"
)

# (earlier roots, current root) while a driver reads what an earlier place pickled
_MOVES: contextvars.ContextVar[tuple[tuple[Path, ...], Path] | None] = contextvars.ContextVar(
    "tuner_relocate_moves", default=None
)


def recorded(root: Path) -> list[Path]:
    """The roots the folder at ``root`` was driven from, oldest first (none before any)."""
    path = ExperimentDirs(root).locations
    if not path.exists():
        return []
    return [Path(r) for r in read_json(path, REMEDY)["roots"]]


def take(root: Path) -> tuple[list[Path], Path | None]:
    """Records ``root`` as the folder's current place (call with the folder's lock held).

    Returns the earlier roots (every recorded one but ``root``) and where the folder was last
    driven from if that was not here (it was moved or copied since), else None.
    """
    roots = recorded(root)
    came_from = roots[-1] if roots and roots[-1] != root else None
    earlier = [r for r in roots if r != root]
    if roots != [*earlier, root]:
        write_json(ExperimentDirs(root).locations, {"roots": [str(r) for r in [*earlier, root]]})
    return earlier, came_from


@contextlib.contextmanager
def moved(earlier: Sequence[Path], root: Path) -> Iterator[None]:
    """Within it, :func:`here` maps paths under any of ``earlier`` to ``root``."""
    token = _MOVES.set((tuple(Path(r) for r in earlier), Path(root)))
    try:
        yield
    finally:
        _MOVES.reset(token)


def _map[P: (str, Path)](path: P, earlier: Sequence[Path], root: Path) -> P:
    for old in earlier:
        try:
            rel = Path(path).relative_to(old)  # lexical: /a/exp2 is not under /a/exp
        except ValueError:
            continue
        new = root / rel
        return new if isinstance(path, Path) else str(new)
    return path


def here[P: (str, Path)](path: P) -> P:
    """``path`` at the folder's current place (unchanged outside :func:`moved`, or where it
    is not under an earlier root: a ``--compile-cache`` elsewhere)."""
    moves = _MOVES.get()
    return path if moves is None else _map(path, *moves)


def repoint(value: Any) -> Any:
    """``value`` with every path (str or Path) in its dicts, lists and tuples put
    :func:`here`: the state a ``__setstate__`` receives (other objects are left as they are)."""
    if _MOVES.get() is None:
        return value
    if isinstance(value, str | Path):
        return here(value)
    if isinstance(value, dict):
        return {k: repoint(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # exactly: a named tuple keeps its own fields
        return type(value)(repoint(v) for v in value)
    return value


def in_folder(path: str, root: str | Path) -> str:
    """``path`` (from a trial's config) at the place of the folder at ``root``: re-pointed from
    any root the folder recorded (a trial restored from a snapshot written elsewhere)."""
    record = ExperimentDirs(Path(root)).locations
    try:
        roots = [Path(r) for r in json.loads(record.read_text())["roots"]]
    except (OSError, ValueError, KeyError, TypeError):
        return path  # no record (an older folder) or a damaged one (the driver stops on it)
    return _map(path, [r for r in roots if r != Path(root)], Path(root))
