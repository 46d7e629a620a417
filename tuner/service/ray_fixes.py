"""Work-arounds for Ray 2.60 behaviour that the service's resume path meets (driver only).

Why this exists: with ``CheckpointConfig(num_to_keep=2)`` the driver deletes a trial's oldest
checkpoint as soon as it registers a new one. When the driver is killed after such a deletion
but before Tune's next snapshot, the restored trial list still names the deleted checkpoint;
the restored trial resumes from the newer one (which exists), but its next save makes Ray delete
the already-deleted path again, and ``_delete_fs_path`` raises ``FileNotFoundError`` from its
directory check (``ray/train/_internal/storage.py``, outside its own try): Tune logs "Error
handling checkpoint" and skips that forced snapshot. A checkpoint that is already gone needs no
deleting, so the deletion is made to skip missing paths.
"""

from __future__ import annotations

import functools


def tolerate_deleted_checkpoints() -> None:
    """Idempotent: patches Ray's checkpoint manager to skip deleting a path that is gone."""
    from ray.train._internal import checkpoint_manager

    original = checkpoint_manager._delete_fs_path
    if getattr(original, "_skips_missing", False):
        return

    @functools.wraps(original)
    def delete(fs, fs_path: str) -> None:
        import pyarrow.fs

        if fs.get_file_info(fs_path).type == pyarrow.fs.FileType.NotFound:
            return
        original(fs=fs, fs_path=fs_path)

    delete._skips_missing = True
    checkpoint_manager._delete_fs_path = delete
