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


def new_trials_where_the_run_is() -> None:
    """Idempotent: a restored search makes its new trials in the run folder Tune restored, not
    in the one the snapshot was written in.

    Tune's restore re-points the restored trials' storage to the folder given to
    ``Tuner.restore`` (``TuneController._restore_trials``), but its ``SearchGenerator`` takes
    back the ``Experiment`` it pickled in ``search_gen_state-*.json``, storage included: after
    ``mv`` every new trial failed its storage check (the old folder is gone), after ``cp -r``
    it would write its checkpoints into the original. The experiment's storage is re-pointed
    here the same way as the trials'.
    """
    import copy

    from ray.tune.execution.tune_controller import TuneController

    original = TuneController.resume
    if getattr(original, "_repoints_experiment", False):
        return

    @functools.wraps(original)
    def resume(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        experiment = getattr(self._search_alg, "_experiment", None)
        if experiment is None or experiment.storage is None:
            return
        storage = copy.copy(experiment.storage)
        storage.storage_filesystem = self._storage.storage_filesystem
        storage.storage_fs_path = self._storage.storage_fs_path
        storage.experiment_dir_name = self._storage.experiment_dir_name
        experiment.storage = storage
        experiment.spec["storage"] = storage

    resume._repoints_experiment = True
    TuneController.resume = resume
