"""W&B offline run folders read back for the tests (wandb ships no reader for ``.wandb``)."""

from __future__ import annotations

from pathlib import Path


def wandb_records(path: Path) -> list:
    """The records of one offline ``.wandb`` file. wandb 0.31 ships no reader for them; the
    file is a 7-byte W&B header, then LevelDB's log format: 32 KiB blocks of chunks, each a
    7-byte header (crc32, length, type: 1 whole, 2 first, 3 middle, 4 last) and a piece of a
    serialised ``Record``."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, block, records, part = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 0:  # zero-filled rest of a block
            pos += left - 7 - n
            continue
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
    return records


def wandb_runs(root: Path) -> dict[str, list[tuple[bool | None, list[int]]]]:
    """Run id -> (its ``resume`` flag, its logged steps) per offline run folder, oldest first
    (the flag None where a killed run wrote no run record yet)."""
    out: dict[str, list[tuple[bool | None, list[int]]]] = {}
    for folder in sorted((root / "wandb" / "wandb").glob("offline-run-*")):
        files = list(folder.glob("*.wandb"))
        records = wandb_records(files[0]) if files else []
        kind = [r.WhichOneof("record_type") for r in records]
        run = next((r.run for r, k in zip(records, kind, strict=True) if k == "run"), None)
        steps = [r.history.step.num for r, k in zip(records, kind, strict=True) if k == "history"]
        run_id = folder.name.rsplit("-", 1)[-1]  # offline-run-<time>-<id>
        assert run is None or run.run_id == run_id
        out.setdefault(run_id, []).append((None if run is None else run.resume, steps))
    return out


def wandb_history(root: Path) -> dict[str, list[dict[str, object]]]:
    """Run id -> every history row it logged (key -> decoded value), over its folders."""
    import json

    out: dict[str, list[dict[str, object]]] = {}
    for folder in sorted((root / "wandb" / "wandb").glob("offline-run-*")):
        files = list(folder.glob("*.wandb"))
        rows = out.setdefault(folder.name.rsplit("-", 1)[-1], [])
        for r in wandb_records(files[0]) if files else []:
            if r.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in r.history.item})
    return out
