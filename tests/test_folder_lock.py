"""One driver per experiment folder (tuner.service.folder_lock) with real processes and files:
a live holder refuses a second driver, a SIGKILLed holder's lock is taken over, and a holder on
another host is judged by its heartbeat. (Two real ``tuner.run`` drivers on one folder:
tests/test_service.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuner.service.folder_lock import LOCK_NAME, FolderLock, FolderLocked

HOLD = ("import sys, time; from pathlib import Path; from tuner.service.folder_lock import "
        "FolderLock; FolderLock(Path(sys.argv[1])).acquire(); print('held', flush=True); "
        "time.sleep(120)")


def holder_process(folder: Path) -> subprocess.Popen:
    """A real process holding the folder's lock (it prints ``held`` once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent.parent)
    assert proc.stdout.readline().strip() == "held"
    return proc


def other_host_lock(folder: Path, heartbeat_age_s: float) -> dict:
    body = {"host": "node-that-is-not-" + socket.gethostname(), "pid": 4242,
            "started": "2026-01-01T00:00:00+0000", "ray_job_id": None, "slurm_job_id": "777",
            "token": "theirs", "heartbeat": time.time() - heartbeat_age_s}
    (folder / LOCK_NAME).write_text(json.dumps(body))
    return body


def test_lock_records_the_holder_and_is_released(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "12345")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"metadata": {"job_submission_id": "raysubmit_abc"}}))
    with FolderLock(tmp_path, heartbeat_s=0.1) as lock:
        body = json.loads(lock.path.read_text())
        assert body["host"] == socket.gethostname() and body["pid"] == os.getpid()
        assert body["slurm_job_id"] == "12345" and body["ray_job_id"] == "raysubmit_abc"
        first = body["heartbeat"]
        time.sleep(0.5)
        assert json.loads(lock.path.read_text())["heartbeat"] > first  # the heartbeat runs
    assert not (tmp_path / LOCK_NAME).exists()


def test_second_driver_is_refused_while_the_holder_lives(tmp_path):
    proc = holder_process(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(FolderLocked) as e:
            FolderLock(tmp_path).acquire()
        assert time.monotonic() - started < 5  # at once, no waiting
        msg = str(e.value)
        assert f"pid {proc.pid}" in msg and socket.gethostname() in msg
        assert "since " in msg and f"kill {proc.pid}" in msg and "rerun" in msg
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid  # untouched
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_sigkilled_driver_is_taken_over(tmp_path):
    proc = holder_process(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # nothing released it
    log = io.StringIO()
    lock = FolderLock(tmp_path, log=log)
    lock.acquire()
    try:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        assert f"pid {proc.pid} is not running on this host" in log.getvalue()
        assert "taking over the lock" in log.getvalue()
    finally:
        lock.release()


def test_other_host_lock_judged_by_its_heartbeat(tmp_path):
    fresh = other_host_lock(tmp_path, heartbeat_age_s=5)
    with pytest.raises(FolderLocked) as e:
        FolderLock(tmp_path, stale_after_s=60).acquire()
    assert fresh["host"] in str(e.value) and "Slurm job 777" in str(e.value)
    assert "scancel 777" in str(e.value)
    other_host_lock(tmp_path, heartbeat_age_s=61)
    log = io.StringIO()
    with FolderLock(tmp_path, stale_after_s=60, log=log) as lock:
        assert json.loads(lock.path.read_text())["token"] != "theirs"
    assert "heartbeat is older than 60 s" in log.getvalue()


def test_cut_lock_body_is_taken_over_only_once_old(tmp_path):
    """A holder killed while writing its body leaves it cut: refused while the file is recent
    (it may be being written), taken over once its mtime is older than the stale limit."""
    path = tmp_path / LOCK_NAME
    path.write_text('{"host": "x", "pi')
    with pytest.raises(FolderLocked):
        FolderLock(tmp_path, stale_after_s=60).acquire()
    old = time.time() - 61
    os.utime(path, (old, old))
    with FolderLock(tmp_path, stale_after_s=60, log=io.StringIO()) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_a_lock_taken_over_is_not_released_by_its_old_holder(tmp_path):
    """A driver paused past the stale limit (its lock taken over) neither rewrites nor removes
    the new holder's lock."""
    log = io.StringIO()
    old = FolderLock(tmp_path, heartbeat_s=0.05, log=log)
    old.acquire()
    other_host_lock(tmp_path, heartbeat_age_s=0)  # what a takeover leaves
    time.sleep(0.3)
    assert "was taken over" in log.getvalue()
    old.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "theirs"
