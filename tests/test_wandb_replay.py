"""W&B runs resumed after a kill (tuner.service.wandb_logging): a new driver's logging actor
logs what the killed one never wrote, and only that, so ``wandb sync`` of the folder gives each
run every step once. Real wandb, offline; the killed actor runs in a subprocess killed with
SIGKILL; the files are read back with W&B's own reader (tests/wandb_files.py). (The same
through the whole service: tests/test_service.py's and tests/test_population_service.py's
SIGKILL rows.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from wandb_files import synced_runs, wandb_runs

from tuner.service.wandb_logging import LOGGED_MARKER, WandbRuns, earlier_results

RUN = "abcd_0001"


def entry(root: Path, it: int, state: str | None = None, run_id: str = RUN) -> dict:
    init = {"project": "p", "group": "g", "id": run_id, "name": run_id, "job_type": "patch=1",
            "dir": str(root / "wandb"), "config": {"lr": 0.01, "cell": "patch=1"}}
    return {"init": init, "step": it, "log": {"step": 20 * it, "eval/nmse": 1.0 / it},
            "state": state}


def killed_actor(root: Path, iterations: list[int]) -> None:
    """A driver's actor that logged ``iterations`` and was then killed (SIGKILL, no finish)."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_wandb_replay import entry
        from tuner.service.wandb_logging import WandbRuns
        runs = WandbRuns()
        runs.log("t", [entry(Path({str(root)!r}), i) for i in {iterations!r}])
        time.sleep(3)  # the wandb service writes the records
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ,
                          "WANDB_MODE": "offline", "WANDB_SILENT": "true"}, timeout=120)
    assert proc.returncode == -signal.SIGKILL


def resumed(root: Path) -> dict:
    """A new actor sent iterations 1-4 (1-3 replayed from result.json, 4 new; the member ends
    there): the run as ``wandb sync`` of the folder gives it."""
    runs = WandbRuns()
    runs.log("t", [entry(root, i) for i in (1, 2, 3)] + [entry(root, 4, "pruned")])
    runs.close()
    return synced_runs(root)[RUN]


def test_interrupted_run_continues_with_each_step_once(tmp_path, monkeypatch):
    """An actor stopped after logging iterations 1-2 (its runs finished at the interrupt, the
    member still training): the next one logs 3-4 in a new folder of the same run, so sync
    gives 1-4 once each, the member's state at the end."""
    monkeypatch.setenv("WANDB_START_METHOD", "thread")  # WandbRuns sets it: restored after
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").mkdir()
    first = WandbRuns()
    first.log("t", [entry(tmp_path, 1), entry(tmp_path, 2)])
    first.close()
    synced = resumed(tmp_path)
    assert [steps for _, steps in wandb_runs(tmp_path)[RUN]] == [[1, 2], [3, 4]]
    assert synced["steps"] == [1, 2, 3, 4] and synced["finished"]
    assert [synced["history"][s]["eval/nmse"] for s in (1, 2, 3, 4)] == [1.0, 0.5, 1 / 3, 0.25]
    assert synced["summary"]["state"] == "pruned"
    assert synced["config"]["lr"] == 0.01 and synced["job_type"] == "patch=1"
    assert all(resume for resume, _ in wandb_runs(tmp_path)[RUN])  # sync appends to the run


def test_killed_run_continues_with_each_step_once(tmp_path, monkeypatch):
    """The same after a SIGKILL: whatever the killed actor's folder holds (wandb writes its
    file in blocks, so maybe nothing), sync gives 1-4 once each."""
    monkeypatch.setenv("WANDB_START_METHOD", "thread")
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").mkdir()
    killed_actor(tmp_path, [1, 2])
    (held,) = wandb_runs(tmp_path)[RUN]
    assert held[1] in ([], [1], [1, 2])
    synced = resumed(tmp_path)
    assert synced["fragments"] == 2 and synced["finished"]
    assert synced["steps"] == [1, 2, 3, 4]
    assert synced["summary"]["state"] == "pruned"


def test_a_finished_run_is_not_reopened(tmp_path, monkeypatch):
    """A run an earlier actor finished (a replay of an ended trial sends it again): no new
    folder, nothing logged twice."""
    monkeypatch.setenv("WANDB_START_METHOD", "thread")
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").mkdir()
    runs = WandbRuns()
    runs.log("t", [entry(tmp_path, 1), entry(tmp_path, 2, "complete")])
    runs.close()
    again = WandbRuns()
    again.log("t", [entry(tmp_path, 1), entry(tmp_path, 2, "complete")])
    again.close()
    assert wandb_runs(tmp_path)[RUN] == [(True, [1, 2])]


def test_first_results_read_nothing(tmp_path):
    row = {"training_iteration": 1, "step": 20}
    assert earlier_results(tmp_path / "missing.json", 5) == []
    (tmp_path / "result.json").write_text(json.dumps(row) + "\n")
    assert earlier_results(tmp_path / "result.json", 1) == []  # a fresh trial's first result
    rows = [row, {**row, "training_iteration": 2}, {**row, "training_iteration": 2, "step": 9}]
    (tmp_path / "result.json").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"training_itera')  # cut by a kill
    assert earlier_results(tmp_path / "result.json", 3) == [row, rows[2]]  # last written


def test_runs_are_marked_written_once_finished(tmp_path, monkeypatch):
    """The mark a new driver trusts (``LOGGED_MARKER``): written only after every run of the
    trial finished, so a trial whose runs a killed driver never finished is logged again."""
    monkeypatch.setenv("WANDB_START_METHOD", "thread")
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").mkdir()
    trial = tmp_path / "trial"
    trial.mkdir()
    runs = WandbRuns()
    runs.log("t", [entry(tmp_path, 1, run_id="m_1"), entry(tmp_path, 1, run_id="m_2")])
    assert not (trial / LOGGED_MARKER).exists()
    runs.finish("t", str(trial))
    assert json.loads((trial / LOGGED_MARKER).read_text())["runs"] == ["m_1", "m_2"]
    runs.close()
    assert {r: f[0][1] for r, f in wandb_runs(tmp_path).items()} == {"m_1": [1], "m_2": [1]}


class _InProcess:
    """The runs actor's handle, calling an in-process :class:`WandbRuns` in call order (what
    Ray's actor does in its own process)."""

    def __init__(self, runs: WandbRuns) -> None:
        self._runs = runs

    def __getattr__(self, name: str):
        import types

        return types.SimpleNamespace(remote=getattr(self._runs, name))


class _Trial:
    """What the callback reads of a Tune trial."""

    def __init__(self, folder: Path, trial_id: str) -> None:
        self.trial_id, self.path, self.local_path = trial_id, str(folder), str(folder)
        self.config = json.loads((folder / "params.json").read_text())
        self.experiment_dir_name, self.status = "search", "RUNNING"


def test_a_restarted_trial_that_ends_at_once_is_logged(tmp_path, monkeypatch):
    """A population restarted by a new driver whose members had all ended at its checkpoint
    returns without a new result: Tune starts and ends it, and its members' runs come from its
    result.json before it is marked written (the population SIGKILL row found them missing)."""
    from tuner.service.wandb_logging import make_callback

    monkeypatch.setenv("WANDB_START_METHOD", "thread")
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "tinypop"
    trial = root / "search" / "train_population_trial_t1"
    trial.mkdir(parents=True)
    config = {"stage": "search", "wave": 0, "halving": {"max_t": 40}, "cells": {"a=1": {}},
              "members": [{"cell": "a=1", "number": 0, "lr": 0.1, "source": "stratified"},
                          {"cell": "a=1", "number": 1, "lr": 9.0, "source": "stratified"}]}
    (trial / "params.json").write_text(json.dumps(config))
    rows = [{"training_iteration": 1, "step": 20, "trial_id": "t1", "member_0/step": 20,
             "member_0/eval/nmse": 0.5, "member_1/step": 20, "member_1/eval/nmse": 0.9,
             "member_1/stopped": True},
            {"training_iteration": 2, "step": 40, "trial_id": "t1", "member_0/step": 40,
             "member_0/eval/nmse": 0.4}]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    callback = make_callback("p", "tinypop", root / "wandb", max_t=40)
    callback.setup()
    runs = WandbRuns()
    callback._runs_actor = _InProcess(runs)
    t = _Trial(trial, "t1")
    callback.log_trial_start(t)  # Tune restarts it; it returns with no result
    callback.log_trial_end(t)
    runs.close()
    assert json.loads((trial / LOGGED_MARKER).read_text())["runs"]
    synced = {r["config"]["number"]: r for r in synced_runs(root).values()
              if r["job_type"] != "program"}
    assert {n: (r["steps"], r["summary"]["state"]) for n, r in synced.items()} == {
        0: ([1, 2], "complete"), 1: ([1], "pruned")}
