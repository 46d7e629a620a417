"""Stage bookkeeping that must survive reruns: the recorded search options and stale finals."""

from __future__ import annotations

import json

import pytest

from tuner.service.dirs import ExperimentDirs
from tuner.service.search.rounds import Research, parse_research, record
from tuner.service.stages import kept_finals, set_aside_stale_finals

CELLS = ["patch=1", "patch=4"]


def test_widen_edges_once_given_stays_on(tmp_path):
    dirs = ExperimentDirs(tmp_path)
    assert not record(dirs.options).widen_edges
    assert record(dirs.options, True).widen_edges
    # a rerun without the flag (e.g. after a kill) keeps the wider round it started
    options = record(dirs.options)
    assert options.widen_edges and not options.widened and options.pending
    assert json.loads(dirs.options.read_text())["widen_edges"]
    options.completed().save(dirs.options)
    assert not record(dirs.options).pending


def test_an_old_options_file_still_reads(tmp_path):
    dirs = ExperimentDirs(tmp_path)
    dirs.options.write_text(json.dumps({"widen_edges": True, "widened": True}))
    options = record(dirs.options)
    assert options.widened and not options.pending and options.researches == []


def test_a_research_is_recorded_once_and_resumed_without_its_flag(tmp_path):
    dirs = ExperimentDirs(tmp_path)
    asked = [Research("patch=4", 1e-3, 1e-2), Research("patch=1", 1e-3, 1e-2)]
    options = record(dirs.options, researches=asked)
    assert options.pending
    assert options.researches == [{"name": "search_research_1", "cells": ["patch=4", "patch=1"],
                                   "lr_low": 1e-3, "lr_high": 1e-2}]
    # the same command again, or a rerun without the flag after a kill: the same one round
    assert record(dirs.options, researches=asked[:1]).researches == options.researches
    assert record(dirs.options).researches == options.researches
    options.completed().save(dirs.options)
    assert not record(dirs.options, researches=asked).pending
    # a new range is a new round, after the first
    again = record(dirs.options, researches=[Research("patch=4", 1e-5, 1e-4)])
    assert again.pending and [r["name"] for r in again.researches] == [
        "search_research_1", "search_research_2"]
    rounds = again.research_rounds({"patch=1": {"model.patch_size": 1},
                                    "patch=4": {"model.patch_size": 4}}, dirs.round_studies)
    assert rounds[1].cells == {"patch=4": {"model.patch_size": 4}}
    assert (rounds[1].lr_low, rounds[1].lr_high) == (1e-5, 1e-4)
    assert rounds[1].study_dir == dirs.studies / "search_research_2"


@pytest.mark.parametrize("text,message", [
    ("patch=4:1e-3:1e-2", None),
    ("patch=9:1e-3:1e-2", "no cell 'patch=9'; allowed: patch=1, patch=4"),
    ("patch=4:1e-2:1e-3", "0 < LOW < HIGH"),
    ("patch=4:0:1e-3", "0 < LOW < HIGH"),
    ("patch=4:1e-3:inf", "0 < LOW < HIGH, finite"),
    ("patch=4:nan:1e-3", "0 < LOW < HIGH, finite"),
    ("patch=4:low:1e-3", "must be numbers"),
    ("patch=4:1e-3", "expected CELL:LOW:HIGH"),
    ("patch=4", "expected CELL:LOW:HIGH"),
    ("", "expected CELL:LOW:HIGH"),
])
def test_research_arguments_are_checked(text, message):
    if message is None:
        assert parse_research(text, CELLS) == Research("patch=4", 1e-3, 1e-2)
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_research(text, CELLS)


def test_finals_of_cells_whose_rate_did_not_change_are_kept(tmp_path):
    dirs = ExperimentDirs(tmp_path)
    assert kept_finals(dirs, {"patch=1": {"lr": 1.0}}) == []
    rows = [{"cell": "patch=1", "seed": 0, "lr": 1.0}, {"cell": "patch=4", "seed": 0, "lr": 2.0}]
    dirs.finals.write_text(json.dumps(rows))
    set_aside_stale_finals(dirs)
    assert kept_finals(dirs, {"patch=1": {"lr": 1.0}, "patch=4": {"lr": 3.0}}) == rows[:1]
    # a later set-aside is the one read (it holds the kept rows again)
    dirs.finals.write_text(json.dumps([rows[0], {**rows[1], "lr": 3.0}]))
    set_aside_stale_finals(dirs)
    assert kept_finals(dirs, {"patch=1": {"lr": 5.0}, "patch=4": {"lr": 3.0}}) == [
        {**rows[1], "lr": 3.0}]


def test_stale_finals_are_set_aside_not_lost(tmp_path):
    dirs = ExperimentDirs(tmp_path)
    dirs.finals.write_text("[]")
    (tmp_path / "finals").mkdir()
    for _ in range(2):
        set_aside_stale_finals(dirs)
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


def test_the_folder_lists_its_rounds_and_their_journals(tmp_path):
    """Every round with a Tune run is found (the first one first), files beside them are not,
    and each round's journals are where the searcher put them."""
    dirs = ExperimentDirs(tmp_path)
    for name in ("search_wider_low", "search", "search_research_1"):
        (tmp_path / name).mkdir()
    (tmp_path / "search_best.json").write_text("{}")
    (tmp_path / "search_trials.csv").write_text("")
    assert dirs.search_rounds() == ["search", "search_research_1", "search_wider_low"]
    assert [dirs.round_studies(r).relative_to(tmp_path).as_posix()
            for r in dirs.search_rounds()] == [
        "studies", "studies/search_research_1", "studies/wider_low"]
    assert dirs.round_studies(dirs.wider_round("high")) == tmp_path / "studies" / "wider_high"


def test_unfinished_finals_at_rates_no_longer_picked_are_set_aside(tmp_path):
    """Ctrl+C in the finals, then a re-search that changed a cell's rate: the unfinished
    finals trained the old rate and must not be resumed (issue 32, row 5)."""
    from tuner.service.stages import interrupted_at_other_rates
    from tuner.service.trial_spec import Worker, shared_final_spec

    dirs = ExperimentDirs(tmp_path)
    trial = dirs.finals_runs / "trial_1"
    trial.mkdir(parents=True)
    spec = shared_final_spec([("patch=1", 1e-3, 0), ("patch=1", 1e-3, 1)],
                             {"patch=1": {"model.patch_size": 1}}, Worker())
    (trial / "params.json").write_text(json.dumps({"final": spec}))
    assert not interrupted_at_other_rates(dirs, {"patch=1": {"lr": 1e-3}})
    assert interrupted_at_other_rates(dirs, {"patch=1": {"lr": 2e-3}})
    set_aside_stale_finals(dirs)
    assert not dirs.finals_runs.exists() and (dirs.stale_finals(1) / "finals").exists()
