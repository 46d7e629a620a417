"""One driver per experiment folder (tuner.service.folder_lock) with real processes and files:
a live holder refuses a second driver, a SIGKILLed holder's lock is taken over, and a holder on
another host is judged by its heartbeat. (Two real ``tuner.run`` drivers on one folder:
tests/test_service.py.)"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuner.service import folder_lock
from tuner.service.files import write_atomic
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


def other_host_lock(folder: Path, heartbeat_age_s: float, **fields) -> dict:
    """The lock a driver on another host made (a new file, as a takeover makes), last renewed
    ``heartbeat_age_s`` ago."""
    body = {"host": "node-that-is-not-" + socket.gethostname(), "pid": 4242,
            "started": "2026-01-01T00:00:00+0000", "ray_job_id": None, "slurm_job_id": "777",
            "slurm_restart_count": "0", "token": "theirs", **fields}
    path = folder / LOCK_NAME
    path.unlink(missing_ok=True)
    path.write_text(json.dumps(body))
    renewed = time.time() - heartbeat_age_s
    os.utime(path, (renewed, renewed))
    return body


def test_lock_records_the_holder_and_is_released(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "12345")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"metadata": {"job_submission_id": "raysubmit_abc"}}))
    with FolderLock(tmp_path, heartbeat_s=0.1) as lock:
        body = json.loads(lock.path.read_text())
        assert body["host"] == socket.gethostname() and body["pid"] == os.getpid()
        assert body["slurm_job_id"] == "12345" and body["ray_job_id"] == "raysubmit_abc"
        old = time.time() - 100
        os.utime(lock.path, (old, old))
        time.sleep(0.5)
        assert lock.path.stat().st_mtime > old + 90  # the heartbeat renews it
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
    assert "last renewed 61 s ago, over the 60 s limit" in log.getvalue()


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
    the new holder's lock, and is told so."""
    lost = []
    old = FolderLock(tmp_path, heartbeat_s=0.05, on_lost=lost.append)
    old.acquire()
    theirs = other_host_lock(tmp_path, heartbeat_age_s=0)  # what a takeover leaves
    time.sleep(0.5)
    assert len(lost) == 1 and "lost the lock" in lost[0] and theirs["host"] in lost[0]
    mtime = (tmp_path / LOCK_NAME).stat().st_mtime
    old.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "theirs"
    assert (tmp_path / LOCK_NAME).stat().st_mtime == mtime  # never renewed by the old one


PAUSED = """
import os, signal, sys
from pathlib import Path
from tuner.service.files import write_atomic
from tuner.service.folder_lock import FolderLock
folder = Path(sys.argv[1])
FolderLock(folder).acquire()
print('held', flush=True)
for n in range(1000):
    write_atomic(folder / 'work.txt', f'paused driver {n}')
    if n == 3:  # a suspended job, a hung file system: the whole process stops here
        os.kill(os.getpid(), signal.SIGSTOP)
"""


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_paused_driver_stops_on_waking_without_writing(tmp_path, monkeypatch):
    """A driver stopped (SIGSTOP) past the stale limit, its lock taken over by a driver that
    looks like another host: on SIGCONT it writes nothing more, and exits with LOST_EXIT and
    a message naming the new holder."""
    env = dict(os.environ, TUNER_LOCK_STALE_S="2", TUNER_LOCK_HEARTBEAT_S="0.2")
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent)
    try:
        assert proc.stdout.readline().strip() == "held"
        deadline = time.monotonic() + 30
        while not _stopped(proc.pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (tmp_path / "work.txt").read_text() == "paused driver 3"
        monkeypatch.setenv(folder_lock.ENV_HOST, "node-2")
        with pytest.raises(FolderLocked):  # renewed less than 2 s ago (file system's clock)
            FolderLock(tmp_path, stale_after_s=2).acquire()
        time.sleep(2.5)
        log = io.StringIO()
        taker = FolderLock(tmp_path, stale_after_s=2, log=log, on_lost=pytest.fail)
        taker.acquire()
        assert re.search(r"last renewed [23] s ago, over the 2 s limit", log.getvalue())
        write_atomic(tmp_path / "work.txt", "taker")
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == folder_lock.LOST_EXIT, err
        assert "error: this driver lost the lock" in err and "host node-2" in err
        assert "Traceback" not in err
        assert (tmp_path / "work.txt").read_text() == "taker"  # nothing written after waking
        assert json.loads(taker.path.read_text())["token"] == taker._token
        taker.release()
    finally:
        proc.kill()
        proc.wait()


def test_heartbeat_retries_io_errors_then_stops_the_driver(tmp_path, monkeypatch):
    """Renewal failing with EIO (a full disk, a stale NFS handle): retried with a warning, the
    lock kept when it recovers; failing for half the stale limit stops the driver."""
    failures = {"left": 3}
    real = folder_lock.touch_fd

    def flaky(fd):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(folder_lock, "touch_fd", flaky)
    log, lost = io.StringIO(), []
    with FolderLock(tmp_path, heartbeat_s=0.1, stale_after_s=2, log=log,
                    on_lost=lost.append) as lock:
        old = time.time() - 100
        os.utime(lock.path, (old, old))
        time.sleep(0.8)
        assert failures["left"] == 0 and not lost
        assert "could not renew" in log.getvalue() and "EIO" in log.getvalue()
        assert "renewed again" in log.getvalue()
        assert lock.path.stat().st_mtime > old + 90
        failures["left"] = 10**6  # now for good
        started = time.monotonic()
        while not lost:
            assert time.monotonic() - started < 5
            time.sleep(0.05)
        assert 0.8 < time.monotonic() - started < 2  # half the stale limit, before a takeover
        assert "could not renew its lock for 1 s" in lost[0] and "Input/output" in lost[0]
        with pytest.raises(folder_lock.LockLost):  # and writes nothing more
            write_atomic(tmp_path / "status.json", "{}")


def test_same_slurm_job_requeued_takes_over_at_once(tmp_path, monkeypatch):
    """A requeued job keeps its SLURM_JOB_ID and counts SLURM_RESTART_COUNT up: its own lock,
    from another node and freshly renewed, is taken over at once; another step of the same
    run (same count) is refused."""
    other_host_lock(tmp_path, heartbeat_age_s=1)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    with pytest.raises(FolderLocked, match="scancel 777"):
        FolderLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    log = io.StringIO()
    with FolderLock(tmp_path, log=log) as lock:
        assert json.loads(lock.path.read_text())["slurm_restart_count"] == "1"
    assert "the same Slurm job 777, requeued (restart 0 -> 1)" in log.getvalue()


def test_reused_pid_on_this_host_is_taken_over(tmp_path):
    """A lock whose pid now belongs to another live process (its start time differs) is not a
    refusal for ever."""
    proc = holder_process(tmp_path)
    try:
        body = json.loads((tmp_path / LOCK_NAME).read_text())
        assert body["pid_start"] == folder_lock.pid_start(proc.pid)
        other_host_lock(tmp_path, 0, host=socket.gethostname(), pid=proc.pid,
                        pid_start=str(int(body["pid_start"]) - 1))  # the pid's first owner
        log = io.StringIO()
        with FolderLock(tmp_path, log=log):
            pass
        assert f"its pid {proc.pid} now belongs to another process" in log.getvalue()
    finally:
        proc.kill()
        proc.wait()


def test_refused_driver_changes_nothing(tmp_path):
    """A second driver on a held folder, its file with grown seeds (a change a started
    experiment takes): exit 2, and the folder's experiment.yaml is left as it was."""
    from tiny_run import TINY

    from tuner.service.cli import Args, main

    folder = tmp_path / "out" / "tiny"
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text(TINY.read_text())
    grown = tmp_path / "tiny.yaml"
    grown.write_text(TINY.read_text().replace("  seeds: [0, 1]", "  seeds: [0, 1, 2]"))
    proc = holder_process(folder)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert main(Args(str(grown), out=str(tmp_path / "out"), wandb=False)) == 2
        assert (folder / "experiment.yaml").read_text() == TINY.read_text()
    finally:
        signal.signal(signal.SIGTERM, handler)
        proc.kill()
        proc.wait()


def test_sigterm_while_the_lock_is_taken_leaves_no_lock(tmp_path):
    """SIGTERM as soon as the driver holds the lock (before Ray starts): a clean stop, exit
    130, the lock removed."""
    from tiny_run import TINY

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "tuner.run", str(TINY), "--out",
                             str(tmp_path), "--no-wandb"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    lock = tmp_path / "tiny" / LOCK_NAME
    deadline = time.monotonic() + 60
    while not lock.exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command to resume" in err and "Traceback" not in err
    assert not lock.exists()
