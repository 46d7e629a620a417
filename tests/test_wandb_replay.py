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

import pytest
from wandb_files import run_folders, synced_runs, wandb_runs

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


def population_trial(root: Path, trial_id: str, numbers: tuple[int, int] = (0, 1),
                     status: str = "RUNNING") -> _Trial:
    """A population trial's folder as Tune leaves it (params.json, result.json): member 0
    reports at iterations 1-2 and reaches the budget (complete), member 1 is stopped at 1
    (pruned)."""
    trial = root / "search" / f"train_population_trial_{trial_id}"
    trial.mkdir(parents=True)
    config = {"stage": "search", "wave": 0, "halving": {"max_t": 40}, "cells": {"a=1": {}},
              "members": [{"cell": "a=1", "number": n, "lr": 0.1 * 90 ** i,
                           "source": "stratified"} for i, n in enumerate(numbers)]}
    (trial / "params.json").write_text(json.dumps(config))
    rows = [{"training_iteration": 1, "step": 20, "trial_id": trial_id, "member_0/step": 20,
             "member_0/eval/nmse": 0.5, "member_1/step": 20, "member_1/eval/nmse": 0.9,
             "member_1/stopped": True},
            {"training_iteration": 2, "step": 40, "trial_id": trial_id, "member_0/step": 40,
             "member_0/eval/nmse": 0.4}]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = _Trial(trial, trial_id)
    t.status = status
    return t


def member_runs(root: Path) -> dict[int, tuple[list[int], str | None, int]]:
    """Optuna number -> (steps, state, fragments) of each member run ``wandb sync`` gives."""
    return {r["config"]["number"]: (r["steps"], r["summary"].get("state"), r["fragments"])
            for r in synced_runs(root).values() if r["job_type"] != "program"}


def test_a_restarted_trial_that_ends_at_once_is_logged(tmp_path, monkeypatch):
    """A population restarted by a new driver whose members had all ended at its checkpoint
    returns without a new result: Tune starts and ends it, and its members' runs come from its
    result.json before it is marked written (the population SIGKILL row found them missing)."""
    from tuner.service.wandb_logging import make_callback

    monkeypatch.setenv("WANDB_START_METHOD", "thread")
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "tinypop"
    t = population_trial(root, "t1")
    callback = make_callback("p", "tinypop", root / "wandb", max_t=40)
    callback.setup()
    runs = WandbRuns()
    callback._runs_actor = _InProcess(runs)
    callback.log_trial_start(t)  # Tune restarts it; it returns with no result
    callback.log_trial_end(t)
    runs.close()
    assert json.loads((Path(t.path) / LOGGED_MARKER).read_text())["runs"]
    assert {n: r[:2] for n, r in member_runs(root).items()} == {
        0: ([1, 2], "complete"), 1: ([1], "pruned")}


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the callback's own runs actor (what ``on_experiment_end`` waits on)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False)
    yield
    if started:
        ray.shutdown()


def driver_end(root: Path, trials: list[_Trial]) -> None:
    """A driver restored from Tune's snapshot in which every trial had ended: Tune sets the
    callbacks up and, its loop having nothing to run, ends the experiment at once (no step,
    no trial hook: ray/tune/tune.py's loop, then ``runner.cleanup``)."""
    from tuner.service.wandb_logging import make_callback

    callback = make_callback("p", root.name, root / "wandb", max_t=40)
    callback.setup()
    callback.on_experiment_end(trials=trials)


def test_a_restored_run_whose_trials_had_all_ended_is_logged(tmp_path, local_ray):
    """A driver killed after Tune's last snapshot (every trial ended) before its actor wrote
    any run: the rerun takes no step, and still writes each member's run, once; a further
    rerun writes nothing."""
    root = tmp_path / "tinypop"
    t = population_trial(root, "t1", status="TERMINATED")
    driver_end(root, [t])
    assert json.loads((Path(t.path) / LOGGED_MARKER).read_text())["runs"]
    assert member_runs(root) == {0: ([1, 2], "complete", 1), 1: ([1], "pruned", 1)}
    assert synced_runs(root)["t1"]["steps"] == [1, 2]  # the program's run
    folders = run_folders(root)
    driver_end(root, [t])
    assert run_folders(root) == folders


def killed_in_final_wait(root: Path, trials: list[_Trial]) -> None:
    """A driver (a subprocess; its runs actor in-process, so killed with it) whose trials had
    all ended, SIGKILLed while its actor was still working through the calls queued for the
    final wait: the first trial's runs finished and marked written, the second's only sent
    its first iteration."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_wandb_replay import _InProcess, _Trial
        from tuner.service.members import result_rows
        from tuner.service.wandb_logging import WandbRuns, make_callback
        root = Path({str(root)!r})
        callback = make_callback("p", root.name, root / "wandb", max_t=40)
        callback.setup()
        callback._runs_actor = _InProcess(WandbRuns())
        for i, path in enumerate({[t.path for t in trials]!r}):
            t = _Trial(Path(path), Path(path).name.rsplit("_", 1)[-1])
            callback.log_trial_start(t)
            rows = result_rows(Path(path) / "result.json")
            for row in rows if i == 0 else rows[:1]:
                callback.log_trial_result(row["training_iteration"], t, row)
            if i == 0:
                callback.log_trial_end(t)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ,
                          "WANDB_MODE": "offline", "WANDB_SILENT": "true"}, timeout=120)
    assert proc.returncode == -signal.SIGKILL


def test_a_kill_while_the_last_runs_are_written_loses_none(tmp_path, local_ray):
    """A kill during the final wait for W&B (after Tune's last snapshot: every trial ended):
    the rerun, which takes no step, writes the runs the killed actor had not finished, each
    step once, and leaves the runs marked written alone; a further rerun writes nothing."""
    root = tmp_path / "tinypop"
    trials = [population_trial(root, "t1", (0, 1), "TERMINATED"),
              population_trial(root, "t2", (2, 3), "TERMINATED")]
    killed_in_final_wait(root, trials)
    assert (Path(trials[0].path) / LOGGED_MARKER).exists()
    assert not (Path(trials[1].path) / LOGGED_MARKER).exists()
    written = json.loads((Path(trials[0].path) / LOGGED_MARKER).read_text())["runs"]
    before = wandb_runs(root)
    driver_end(root, trials)
    assert json.loads((Path(trials[1].path) / LOGGED_MARKER).read_text())["runs"]
    assert {n: r[:2] for n, r in member_runs(root).items()} == {
        0: ([1, 2], "complete"), 1: ([1], "pruned"), 2: ([1, 2], "complete"),
        3: ([1], "pruned")}
    assert {r: wandb_runs(root)[r] for r in written} == {r: before[r] for r in written}
    assert synced_runs(root)["t2"]["steps"] == [1, 2]  # the program's run
    folders = run_folders(root)
    driver_end(root, trials)
    assert run_folders(root) == folders


def test_runs_not_written_in_the_final_wait_are_named(tmp_path, local_ray, monkeypatch, capsys):
    """Past the final wait Tune's run returns and the stage counts as done (no later driver
    replays it): trials whose runs were not written by then are named on stderr."""
    import time

    from tuner.service import wandb_logging

    monkeypatch.setattr(wandb_logging, "FINISH_TIMEOUT_S", 0)  # the actor needs seconds to start
    root = tmp_path / "tinypop"
    t = population_trial(root, "t1", status="TERMINATED")
    driver_end(root, [t])
    err = capsys.readouterr().err
    assert "W&B runs of 1 trial(s) not written within 0 s (t1)" in err
    deadline = time.monotonic() + 120
    while not (Path(t.path) / LOGGED_MARKER).exists() and time.monotonic() < deadline:
        time.sleep(0.5)  # the actor goes on: only late
    assert (Path(t.path) / LOGGED_MARKER).exists()
