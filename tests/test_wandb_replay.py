"""A trial resumed by a new driver logs to W&B what the killed driver's logging actor never
wrote: its earlier results, replayed from Tune's result.json (tuner.service.wandb_logging).
Real wandb, offline, in this process (the actor's class without Ray); the run file is read
back record by record. (The same through a real SIGKILL: tests/test_service.py's finals rows.)
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.wandb import _clean_log
from wandb_files import wandb_runs

from tuner.service.wandb_logging import WandbRuns, earlier_results


def result(it: int) -> dict:
    return {TRAINING_ITERATION: it, "step": 20 * it, "eval/nmse": 1.0 / it, "trial_id": "t_1",
            "config": {"lr": 0.01}, "done": False}


def resumed_run(tmp_path: Path, monkeypatch, replay: bool) -> list[int]:
    """A trial that reported iterations 1 and 2 under a killed driver (in its result.json;
    its W&B run never written), now reporting 3 under a new one: the steps its run logs."""
    monkeypatch.setenv("WANDB_START_METHOD", "thread")  # WandbRuns sets it: restored after
    monkeypatch.setenv("WANDB_MODE", "offline")
    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    rows = [result(1), result(2), {**result(2), "eval/nmse": 0.4}]  # 2 again: resumed once
    (trial_dir / "result.json").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"training_itera')  # and cut by a kill
    earlier = [_clean_log(r) for r in earlier_results(trial_dir / "result.json", 3)]
    assert [(r[TRAINING_ITERATION], r["eval/nmse"]) for r in earlier] == [(1, 1.0), (2, 0.4)]
    runs = WandbRuns()
    (tmp_path / "wandb").mkdir()  # as the experiment's <folder>/wandb
    init = {"project": "p", "group": "g", "id": "t_1", "name": "t_1",
            "dir": str(tmp_path / "wandb"), "resume": "allow"}
    args = (str(trial_dir), [], [], init)
    runs.log("t_1", _clean_log(result(3)), args, earlier if replay else None)
    runs.close()
    folders = wandb_runs(tmp_path)["t_1"]
    assert len(folders) == 1 and folders[0][0]  # one folder, resuming the trial's run
    return folders[0][1]


def test_resumed_trial_replays_what_its_run_lacks(tmp_path, monkeypatch):
    assert resumed_run(tmp_path, monkeypatch, replay=True) == [1, 2, 3]


def test_without_the_replay_the_earlier_results_are_lost(tmp_path, monkeypatch):
    """What the finals' SIGKILL row found before the fix: the resumed run held 2-3, not 1."""
    assert resumed_run(tmp_path, monkeypatch, replay=False) == [3]


def test_first_results_read_nothing(tmp_path):
    assert earlier_results(tmp_path / "missing.json", 5) == []
    (tmp_path / "result.json").write_text(json.dumps(result(1)) + "\n")
    assert earlier_results(tmp_path / "result.json", 1) == []  # a fresh trial's first result


def test_a_finished_run_is_marked_written_and_an_unfinished_one_is_not(tmp_path, monkeypatch):
    """The mark a new driver trusts (``LOGGED_MARKER``): written only after the run finished,
    so a trial whose run a killed driver never finished is logged again from result.json."""
    from tuner.service.wandb_logging import LOGGED_MARKER

    monkeypatch.setenv("WANDB_START_METHOD", "thread")
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").mkdir()
    runs = WandbRuns()
    dirs = {}
    for trial_id in ("t_1", "t_2"):
        dirs[trial_id] = tmp_path / trial_id
        dirs[trial_id].mkdir()
        init = {"project": "p", "group": "g", "id": trial_id, "name": trial_id,
                "dir": str(tmp_path / "wandb"), "resume": "allow"}
        runs.log(trial_id, _clean_log(result(1)), (str(dirs[trial_id]), [], [], init))
    runs.finish("t_1")
    assert json.loads((dirs["t_1"] / LOGGED_MARKER).read_text())["run_id"] == "t_1"
    assert not (dirs["t_2"] / LOGGED_MARKER).exists()  # still open: not trusted
    runs.close()  # the experiment's end finishes (and marks) the rest
    assert (dirs["t_2"] / LOGGED_MARKER).exists()
