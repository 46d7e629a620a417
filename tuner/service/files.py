"""The experiment folder's JSON files, written so that a kill never leaves half of one, and read
back with a clear error where one is damaged anyway (a disk that filled, a copy cut short).

A write goes to a temporary file in the same folder, is flushed to disk (fsync), then renamed
over the target (``os.replace``: atomic on POSIX file systems, NFS included): a reader sees the
old file or the new one, never a mix, and a crash leaves at most a stray temporary file. The
file gets the mode an ordinary write would (0666 less the umask), so that colleagues, a viewer
run by another user or a shared dashboard can read it: ``mkstemp`` alone makes it 0600.

A driver that holds the folder's lock registers a check (:func:`guard_writes`) that runs before
every write: a driver that lost its lock (paused past the stale limit, then taken over) stops
there instead of overwriting the new holder's files.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_guards: list[Callable[[Path], None]] = []
_umask_lock = threading.Lock()


class DamagedFile(Exception):
    """A file of the experiment folder that cannot be read; the message names it and the
    remedy (the CLI prints it and exits 2)."""


def guard_writes(check: Callable[[Path], None]) -> Callable[[], None]:
    """Runs ``check(path)`` before every :func:`write_atomic` (it raises or exits to stop the
    write); returns the function that removes it."""
    _guards.append(check)
    return lambda: _guards.remove(check) if check in _guards else None


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` can
    only be read by setting it, which races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text`` in one step, its content on disk before the rename."""
    path = Path(path)
    for check in list(_guards):
        check(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # the rename itself reaches the disk with the folder's entry (not possible everywhere)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path: Path, data: Any, **dumps: Any) -> None:
    """``data`` as JSON (indent 1 unless told), written atomically."""
    write_atomic(path, json.dumps(data, **{"indent": 1, **dumps}))


def read_json(path: Path, remedy: str) -> Any:
    """The JSON in ``path``; :class:`DamagedFile` naming the file, where it breaks and
    ``remedy`` if it is not valid JSON."""
    path = Path(path)
    text = path.read_text(errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "it is empty" if not text.strip() else (
            f"line {e.lineno}, column {e.colno}: {e.msg}")
        raise DamagedFile(f"{path} is damaged ({what}); {remedy}") from None
