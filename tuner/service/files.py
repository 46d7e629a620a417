"""The experiment folder's JSON files, written so that a kill never leaves half of one, and read
back with a clear error where one is damaged anyway (a disk that filled, a copy cut short).

A write goes to a temporary file in the same folder, is flushed to disk (fsync), then renamed
over the target (``os.replace``: atomic on POSIX file systems, NFS included): a reader sees the
old file or the new one, never a mix, and a crash leaves at most a stray temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class DamagedFile(Exception):
    """A file of the experiment folder that cannot be read; the message names it and the
    remedy (the CLI prints it and exits 2)."""


def write_atomic(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text`` in one step, its content on disk before the rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
