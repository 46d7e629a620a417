"""A cell's Optuna journal checked before the study is opened, and a torn last record dropped.

``JournalFileBackend`` appends one JSON record per line. A driver killed mid-append (a lost
node, a full disk) leaves the last line cut; Optuna then appends the next record to that cut
line and the journal fails to load for good (``JSONDecodeError``). Only the record being
written when the driver stopped can be cut, and what it recorded is still in Tune's snapshot
(the trial resumes from its checkpoint and reports again), so dropping it loses nothing. A
record broken anywhere else is real damage: a clear error, the file left as it is. So is a
journal holding NUL bytes (a node that crashed before the file system wrote its blocks, common
on NFS): what it held is gone, and an empty study would silently search again. A line holding
a cut record followed by a whole one (a driver that appended after a cut without a repair)
keeps the whole one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuner.service.files import DamagedFile, write_atomic


class JournalDamaged(DamagedFile):
    """A journal broken before its last record (not a torn tail)."""


RECORD_START = b'{"op_code":'  # how Optuna writes every record (compact JSON, op_code first)


def _complete(line: bytes) -> bool:
    """Whether ``line`` is one whole Optuna journal record (not merely some JSON)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (isinstance(record, dict) and isinstance(record.get("op_code"), int)
            and isinstance(record.get("worker_id"), str))


def _cut(line: bytes) -> bool:
    """Whether ``line`` can be a record cut short: no prefix of a JSON object is one."""
    try:
        json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True
    return False


def _whole_after_cut(line: bytes) -> int | None:
    """Where a whole record starts in a line that begins with a cut one, else None."""
    start = line.rfind(RECORD_START)
    return start if start > 0 and _complete(line[start:]) else None


def _remedy(path: Path) -> str:
    return (f"Restore the file from a copy (an earlier repair keeps one as "
            f"{path.name}.torn-<n>), or rerun the experiment in a new --out folder")


def repair_torn_tail(path: Path) -> str | None:
    """Drops an incomplete last record of the journal ``path``, keeping the original beside it
    as ``<name>.torn-<n>``. Returns the message to print, or None when the journal is whole.

    Raises:
        JournalDamaged: a record other than the last is broken, or the journal holds NUL
            bytes (file, line, remedy).
    """
    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    if b"\0" in data:
        at = data.index(b"\0")
        raise JournalDamaged(
            f"{path}: NUL bytes from byte {at} of {len(data)} (a node that crashed before the "
            "file system wrote the journal's blocks): the records there are lost, and the "
            f"cell's search cannot resume from it. {_remedy(path)}")
    lines = data.split(b"\n")  # a whole journal ends with "\n": its last piece is empty
    tail = lines.pop()
    if tail == b"" and lines and _cut(lines[-1]) and _whole_after_cut(lines[-1]) is None:
        tail = lines.pop() + b"\n"  # a cut last record that happens to end a line
    unended = bool(tail) and not _cut(tail)
    if unended:  # some JSON, not a cut record: judged as a line below, then ended
        lines.append(tail)
        tail = b""
    cut_lines = []  # (line number, the cut record dropped from it)
    for number, line in enumerate(lines, start=1):
        if _complete(line):
            continue
        start = _whole_after_cut(line) if _cut(line) else None
        if start is None:
            raise JournalDamaged(
                f"{path}, line {number} of {len(lines) + bool(tail)}: not a complete Optuna "
                f"journal record ({line[:80]!r}); only a record cut by a kill can be dropped (the "
                f"last one, or one followed by a whole record on its line). {_remedy(path)}")
        cut_lines.append((number, line[:start]))
        lines[number - 1] = line[start:]
    if not tail and not cut_lines:
        if unended:
            write_atomic(path, data.decode() + "\n")
            return f"repaired {path}: its last record lacked its line end; added"
        return None
    n = 1
    while path.with_name(f"{path.name}.torn-{n}").exists():
        n += 1
    copy = path.with_name(f"{path.name}.torn-{n}")
    shutil.copy2(path, copy)
    write_atomic(path, b"".join(line + b"\n" for line in lines).decode())
    what = [f"line {n}, {len(c)} bytes: {c[:60]!r}..." for n, c in cut_lines]
    if tail:
        what.append(f"its last record (line {len(lines) + 1}, {len(tail)} bytes: "
                    f"{tail[:60]!r}...)")
    return (f"repaired {path}: {'; '.join(what)} was cut when the driver stopped and was "
            f"dropped; the {len(lines)} whole records are kept, the original is saved as "
            f"{copy.name}. The trial it belonged to resumes from Tune's snapshot.")
