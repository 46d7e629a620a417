"""A whole copy of each Tune snapshot, kept beside the one Tune syncs into the run folder.

Tune (2.60) writes its run snapshot (``experiment_state-<session>.json``, the searcher's
``searcher-state-<session>.pkl``) whole into a staging folder on the driver, then copies it
into the run folder in a background thread, overwriting the previous one in place. A driver
killed during that copy leaves the run folder's only snapshot of the session cut, and the
previous content gone: Tune would train the stage again from step 0. Tune has no hook after
the copy, but it asks its callbacks for their state (``get_state``) right after it wrote the
staging files and before the copy starts; :class:`SnapshotCopy` copies them there, atomically
(temporary file, then rename), to ``<name>.whole`` in the run folder. A resume
(:mod:`tuner.service.folder_check`) puts a cut snapshot back from its whole copy, which holds
the same snapshot or a newer one.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

from ray.tune import Callback

PATTERNS = ("experiment_state-*.json", "searcher-state-*.pkl")  # Tune's names
SUFFIX = ".whole"


def newest(folder: Path, pattern: str) -> Path | None:
    """The most recently written file of ``pattern`` in ``folder``."""
    files = [p for p in folder.glob(pattern) if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None


def copy_atomic(source: Path, target: Path) -> None:
    """``target`` holds all of ``source`` or its previous content, never a part."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def is_whole(path: Path) -> bool:
    """Whether a snapshot file reads back (a cut JSON or pickle does not)."""
    data = path.read_bytes()
    try:
        if path.name.removesuffix(SUFFIX).endswith(".json"):
            return isinstance(json.loads(data), dict)
        pickle.loads(data)
        return True
    except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
        return False


class SnapshotCopy(Callback):
    """Tune callback; copies the staging snapshot files when Tune asks for callback state."""

    def __init__(self) -> None:
        self._folders: tuple[Path, Path] | None = None  # (staging, run folder)

    def __getstate__(self) -> dict[str, Any]:  # the staging folder is the session's own
        return {"_folders": None}

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._folders is None and trials:  # the paths are the run's: any trial has them
            storage = trials[0].storage
            if getattr(storage.storage_filesystem, "type_name", "local") != "local":
                return  # a remote run folder: Tune's own copy is all there is
            self._folders = (Path(storage.experiment_driver_staging_path),
                             Path(storage.experiment_fs_path))

    def get_state(self) -> None:
        if self._folders is not None:
            staging, run = self._folders
            for pattern in PATTERNS:
                source = newest(staging, pattern)
                if source is not None:
                    copy_atomic(source, run / (source.name + SUFFIX))
        return None  # nothing of this callback to restore


def restore_cut(folder: Path) -> list[str]:
    """Puts each cut snapshot of the Tune run in ``folder`` back from its whole copy (the cut
    one kept as ``<name>.torn``); the messages to print."""
    messages = []
    for pattern in PATTERNS:
        for path in sorted(folder.glob(pattern)):
            copy = path.with_name(path.name + SUFFIX)
            if is_whole(path) or not copy.exists() or not is_whole(copy):
                continue
            os.replace(path, path.with_name(path.name + ".torn"))
            copy_atomic(copy, path)
            messages.append(f"{path} was cut (a kill while Tune copied it into the folder): "
                            f"put back from the whole copy {copy.name} that the driver kept; "
                            f"the cut one kept as {path.name}.torn")
    return messages
