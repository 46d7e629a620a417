"""What earlier offline fragments of a W&B run already hold, read from their ``.wandb`` files.

A run resumed by a new process (a driver killed and rerun, a restarted logging actor) starts
a new offline folder of the same run id, whose step counter starts at 0; ``wandb sync``
uploads the folders in order of start time. So that each step lands in exactly one folder,
the new fragment logs only steps past those the earlier ones hold, and a run an earlier
fragment finished is not opened again.

wandb 0.31's Python package ships no reader for ``.wandb`` files (its Go ``wandb-core`` has
one: the tests read the files with it, independently of this one). The file is a 7-byte W&B
header, then LevelDB's log format: 32 KiB blocks of chunks, each a 7-byte header (crc32,
length, type: 1 whole, 2 first, 3 middle, 4 last) and a piece of a serialised ``Record``; a
kill leaves at most a cut last record, which is skipped.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

_BLOCK, _HEADER = 32768, 7
STATE_KEY = "state"  # the summary key where a member's run says how it ended


def records(path: Path) -> list:
    """The ``wandb_internal_pb2.Record`` s of one ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data, pos, out, part = path.read_bytes(), _HEADER, [], b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk, pos = data[pos + _HEADER:pos + _HEADER + n], pos + _HEADER + n
        if kind == 0:  # zero-filled rest of a block
            pos += left - _HEADER - n
            continue
        if len(chunk) < n:  # cut by a kill
            break
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(part)
            except Exception:  # noqa: BLE001 - a torn record: what follows is unreadable
                break
            out.append(record)
    return out


@dataclasses.dataclass(frozen=True)
class Fragments:
    """A run id's earlier offline folders: the last step they logged (-1: none) and whether
    one of them ended the member (its summary's ``state``: a run finished at an interrupt,
    its member still training, is continued)."""

    last_step: int = -1
    finished: bool = False


def fragments(wandb_dir: Path, run_id: str) -> Fragments:
    """What the offline folders of ``run_id`` under ``wandb_dir`` (``<dir>/wandb``) hold."""
    last, finished = -1, False
    for folder in wandb_dir.glob(f"offline-run-*-{run_id}"):
        if folder.name.rsplit("-", 1)[-1] != run_id:
            continue
        for file in folder.glob("*.wandb"):
            for r in records(file):
                kind = r.WhichOneof("record_type")
                if kind == "history":
                    last = max(last, int(r.history.step.num))
                elif kind == "summary" and any(i.key == STATE_KEY for i in r.summary.update):
                    finished = True
    return Fragments(last, finished)
