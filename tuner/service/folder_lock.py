"""One driver per experiment folder: a lock file that works on the shared file systems of
Slurm clusters.

``flock``/``fcntl`` locks are not reliable on NFS (lost when a client's lease lapses, or not
shared between clients at all), so the lock is the file itself: created with
``O_CREAT | O_EXCL`` (atomic on a local disk and on NFSv3+), holding who took it (host, pid,
start time, Ray and Slurm job ids) and a heartbeat that a daemon thread rewrites every
``heartbeat_s``. A holder is gone when its pid is dead on this host, or, from another host,
when its heartbeat is older than ``stale_after_s``; its lock is then taken over, under a
second ``O_EXCL`` file so that two drivers taking over at once cannot both win. Readers (the
viewer) ignore the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

LOCK_NAME = "driver.lock"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0  # 12 missed heartbeats: far above NFS attribute caching and clock skew


class FolderLocked(Exception):
    """Another live driver holds the folder; the message names it and the remedy."""


def _job_ids() -> dict[str, str | None]:
    """The Ray job (``ray job submit`` puts its submission id in the entrypoint's environment)
    and Slurm job this driver runs in, where there is one: known before Ray starts."""
    ray_job = os.environ.get("RAY_JOB_ID")
    with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
        config = json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"])
        ray_job = config["metadata"]["job_submission_id"] or ray_job
    return {"ray_job_id": ray_job, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def describe(holder: dict[str, Any], now: float | None = None) -> str:
    """``host H, pid P, since S (Ray job J, Slurm job K), heartbeat N s ago``."""
    now = time.time() if now is None else now
    jobs = [f"{name} job {holder[key]}" for name, key in (("Ray", "ray_job_id"),
                                                         ("Slurm", "slurm_job_id"))
            if holder.get(key)]
    beat = holder.get("heartbeat")
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
            f"{holder.get('started', '?')}" + (f" ({', '.join(jobs)})" if jobs else "")
            + (f", heartbeat {now - beat:.0f} s ago" if isinstance(beat, int | float) else ""))


@dataclasses.dataclass
class FolderLock:
    """The exclusive right to drive the experiment in ``folder``.

    Use as a context manager (or :meth:`acquire` / :meth:`release`); :meth:`acquire` raises
    :class:`FolderLocked` while another live driver holds it.
    """

    folder: Path
    heartbeat_s: float = HEARTBEAT_S
    stale_after_s: float = STALE_AFTER_S
    log: Any = dataclasses.field(default=sys.stderr)  # where takeovers are announced
    _token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _body: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self._body = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **_job_ids(),
                      "command": " ".join(sys.argv), "token": self._token,
                      "heartbeat": time.time()}
        for _ in range(5):  # a takeover racing another one may need a second look
            if self._create():
                break
            holder = self.read()
            if not holder:  # released meanwhile
                continue
            reason = self._gone(holder)
            if reason is None:
                raise FolderLocked(self._refusal(holder))
            if self._take_over(holder, reason):
                break
        else:
            raise FolderLocked(self._refusal(self.read()))
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="folder-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stops the heartbeat and removes the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.read().get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def read(self) -> dict[str, Any]:
        """The holder's record; ``{}`` where there is no lock, and ``{"unreadable": ...}``
        where a body is missing or cut (a holder killed while writing it)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return {"unreadable": text[:200], "mtime": self._mtime()}
        return body

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _gone(self, holder: dict[str, Any]) -> str | None:
        """Why the holder is gone, or None while it may be alive."""
        now = time.time()
        if not holder:
            return "the lock was released meanwhile"
        if "unreadable" in holder:  # cut while written, or still being written
            mtime = holder.get("mtime")
            if mtime is None or now - mtime > self.stale_after_s:
                return "its lock file is unreadable and was last written long ago"
            return None
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"]):
                return f"its pid {holder['pid']} is not running on this host"
            return None
        beat = holder.get("heartbeat")
        if not isinstance(beat, int | float) or now - beat > self.stale_after_s:
            return (f"its heartbeat is older than {self.stale_after_s:.0f} s (host "
                    f"{holder.get('host', '?')} lost, or its driver killed)")
        return None

    def _take_over(self, holder: dict[str, Any], reason: str) -> bool:
        """Replaces a gone holder's lock, one taker at a time (an ``O_EXCL`` guard file);
        whether the lock is now ours."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # a taker that died mid-takeover
                if time.time() - guard.stat().st_mtime > self.stale_after_s:
                    guard.unlink()
            time.sleep(0.5)
            return False
        try:
            if self.read() != holder:  # changed meanwhile: look again
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            print(f"taking over the lock of {self.folder}: the driver that held it ("
                  f"{describe(holder)}) is gone: {reason}", file=self.log, flush=True)
            return self._create()
        finally:
            guard.unlink()

    def _refusal(self, holder: dict[str, Any]) -> str:
        if "unreadable" in holder:
            who = "a driver whose lock file is being written"
        else:
            who = f"another driver: {describe(holder)}"
        remedy = ("wait for it to finish, or stop it"
                  + (f" (scancel {holder['slurm_job_id']})" if holder.get("slurm_job_id")
                     else f" (kill {holder['pid']} on {holder.get('host')})"
                     if holder.get("pid") else ""))
        return (f"{self.folder} is in use by {who}. Two drivers on one folder would train the "
                f"same trials twice and race on its files. {remedy[0].upper()}{remedy[1:]}, "
                f"then rerun this command to resume; a lock whose driver is gone is taken over "
                f"automatically (its pid dead on its host, or its heartbeat older than "
                f"{self.stale_after_s:.0f} s). Lock file: {self.path}")

    def _beat(self) -> None:
        """Rewrites the heartbeat until released; stops if the lock is no longer ours (taken
        over after a pause longer than ``stale_after_s``), with a warning."""
        while not self._stop.wait(self.heartbeat_s):
            if self.read().get("token") != self._token:
                print(f"warning: the lock of {self.folder} was taken over by "
                      f"{describe(self.read())}; this driver no longer holds it",
                      file=self.log, flush=True)
                return
            self._body["heartbeat"] = time.time()
            tmp = self.path.with_name(f"{LOCK_NAME}.{self._token}.tmp")
            tmp.write_text(json.dumps(self._body, indent=1))
            os.replace(tmp, self.path)
