"""Stage bookkeeping that must survive reruns: the recorded search options and stale finals."""

from __future__ import annotations

import json

from tuner.service.dirs import ExperimentDirs
from tuner.service.stages import _set_aside_stale_finals, search_options


def test_widen_edges_once_given_stays_on(tmp_path):
    dirs = ExperimentDirs(tmp_path)
    assert search_options(dirs, False) == {"widen_edges": False, "widened": False}
    assert search_options(dirs, True)["widen_edges"]
    # a rerun without the flag (e.g. after a kill) keeps the wider round it started
    assert search_options(dirs, False) == {"widen_edges": True, "widened": False}
    assert json.loads(dirs.options.read_text())["widen_edges"]


def test_stale_finals_are_set_aside_not_lost(tmp_path):
    dirs = ExperimentDirs(tmp_path)
    dirs.finals.write_text("[]")
    (tmp_path / "finals").mkdir()
    for _ in range(2):
        _set_aside_stale_finals(dirs)
        dirs.finals.write_text("[]")
    assert (tmp_path / "finals-stale-1" / "finals.json").exists()
    assert (tmp_path / "finals-stale-1" / "finals").is_dir()
    assert (tmp_path / "finals-stale-2" / "finals.json").exists()


def test_deleting_a_checkpoint_that_is_gone_is_a_no_op(tmp_path):
    """Ray deletes the oldest checkpoint again after a resume (tuner/service/ray_fixes.py)."""
    import pyarrow.fs
    from ray.train._internal import checkpoint_manager

    from tuner.service import ray_fixes

    ray_fixes.tolerate_deleted_checkpoints()
    ray_fixes.tolerate_deleted_checkpoints()  # idempotent
    fs = pyarrow.fs.LocalFileSystem()
    checkpoint_manager._delete_fs_path(fs=fs, fs_path=str(tmp_path / "checkpoint_000000"))
    (tmp_path / "checkpoint_000001").mkdir()
    checkpoint_manager._delete_fs_path(fs=fs, fs_path=str(tmp_path / "checkpoint_000001"))
    assert not (tmp_path / "checkpoint_000001").exists()
