"""A cell's Optuna journal checked before the study is opened, and a torn last record dropped.

``JournalFileBackend`` appends one JSON record per line. A driver killed mid-append (a lost
node, a full disk) leaves the last line cut; Optuna then appends the next record to that cut
line and the journal fails to load for good (``JSONDecodeError``). Only the record being
written when the driver stopped can be cut, and what it recorded is still in Tune's snapshot
(the trial resumes from its checkpoint and reports again), so dropping it loses nothing. A
record broken anywhere else is real damage: a clear error, the file left as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuner.service.files import DamagedFile, write_atomic


class JournalDamaged(DamagedFile):
    """A journal broken before its last record (not a torn tail)."""


def _complete(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def repair_torn_tail(path: Path) -> str | None:
    """Drops an incomplete last record of the journal ``path``, keeping the original beside it
    as ``<name>.torn-<n>``. Returns the message to print, or None when the journal is whole.

    Raises:
        JournalDamaged: a record other than the last is broken (file, line, remedy).
    """
    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    lines = data.split(b"\n")  # a whole journal ends with "\n": its last piece is empty
    tail = lines.pop()
    if tail == b"" and lines and not _complete(lines[-1]):
        tail = lines.pop() + b"\n"  # a cut last record that happens to end a line
    for number, line in enumerate(lines, start=1):
        if not _complete(line):
            raise JournalDamaged(
                f"{path}, line {number} of {len(lines) + bool(tail)}: not a complete Optuna "
                f"journal record ({line[:80]!r}); only a torn last record can be dropped, and "
                f"this one is followed by others. Restore the file from a copy (an earlier "
                f"repair keeps one as {path.name}.torn-<n>), or rerun the experiment in a new "
                "--out folder")
    if not tail:
        return None
    n = 1
    while path.with_name(f"{path.name}.torn-{n}").exists():
        n += 1
    copy = path.with_name(f"{path.name}.torn-{n}")
    shutil.copy2(path, copy)
    kept = data[:len(data) - len(tail)]
    write_atomic(path, kept.decode())
    return (f"repaired {path}: its last record (line {len(lines) + 1}, {len(tail)} bytes: "
            f"{tail[:60]!r}...) was cut when the driver stopped and was dropped; the "
            f"{len(lines)} records before it are kept, the original is saved as {copy.name}. "
            "The trial it belonged to resumes from Tune's snapshot.")
