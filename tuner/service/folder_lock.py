"""One driver per experiment folder: a lock file that works on the shared file systems of
Slurm clusters.

``flock``/``fcntl`` locks are not reliable on NFS (lost when a client's lease lapses, or not
shared between clients at all), so the lock is the file itself: created with
``O_CREAT | O_EXCL`` (atomic on a local disk and on NFSv3+), holding who took it (host, pid and
the pid's start time, Ray and Slurm job ids). The holder keeps the file open and a daemon
thread renews it every ``heartbeat_s`` by setting its mtime (``futimens`` on that open file:
the file server's clock on NFS). Renewal touches the holder's own file only, so a holder that
slept through a takeover cannot overwrite the new lock, and finds on waking that the name no
longer leads to its file.

A holder is gone when its pid is dead on this host (or now belongs to a process started at
another time: pid reuse), when it is the same Slurm job requeued (same ``SLURM_JOB_ID``, another
``SLURM_RESTART_COUNT``), or when its lock's mtime is older than ``stale_after_s``, judged on
the file system's clock (the mtime of a probe file made in the folder) so that no two hosts'
clocks are compared. A gone holder's lock is taken over under a second ``O_EXCL`` file (one
taker at a time) by renaming it aside first: a holder that renewed meanwhile keeps it.

A holder that cannot renew (I/O errors for half the stale limit) or finds its lock taken
stops the process at once (exit :data:`LOST_EXIT`), writing nothing more: another driver may
already train the same trials, and even a clean stop would write Tune's snapshot over its
files. Its writes through :mod:`tuner.service.files` check the lock first after a pause.
Readers (the viewer) ignore the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.service import files

LOCK_NAME = "driver.lock"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0  # 12 missed renewals: far above NFS attribute caching
LOST_EXIT = 3  # the exit status of a driver that lost its lock
# Overrides of the stale limit, the renewal period and this host's name: for tests (a paused
# driver and a taker that looks like another host on one machine) and for unusual sites
ENV_STALE = "TUNER_LOCK_STALE_S"
ENV_HEARTBEAT = "TUNER_LOCK_HEARTBEAT_S"
ENV_HOST = "TUNER_LOCK_HOST"


class FolderLocked(Exception):
    """Another live driver holds the folder; the message names it and the remedy."""


class LockLost(Exception):
    """A write refused because this driver lost its lock (where ``on_lost`` did not exit)."""


class _Lost(Exception):
    """The lock's name no longer leads to this holder's file."""


def host() -> str:
    return os.environ.get(ENV_HOST) or socket.gethostname()


def _job_ids() -> dict[str, str | None]:
    """The Ray job (``ray job submit`` puts its submission id in the entrypoint's environment)
    and Slurm job (and its requeue count) this driver runs in: known before Ray starts."""
    ray_job = os.environ.get("RAY_JOB_ID")
    with contextlib.suppress(KeyError, ValueError, TypeError, AttributeError):
        config = json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"])
        ray_job = config["metadata"]["job_submission_id"] or ray_job
    slurm = os.environ.get("SLURM_JOB_ID")
    return {"ray_job_id": ray_job, "slurm_job_id": slurm,
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0") if slurm else None}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def pid_start(pid: int) -> str | None:
    """When the process ``pid`` started (clock ticks since boot, from ``/proc``), to tell a
    reused pid from its first owner; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state is field 3
    return fields[19] if len(fields) > 19 else None  # field 22: starttime


def fs_now(folder: Path) -> float:
    """The file system's clock: the mtime of a probe file made in ``folder`` (on NFS set by
    the server, the clock that also stamps the lock's renewals)."""
    probe = folder / f".{LOCK_NAME}.now-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()


def touch_fd(fd: int) -> None:
    """Renews the lock: its mtime to now (the server's clock on NFS)."""
    os.utime(fd)


def describe(holder: dict[str, Any], age_s: float | None = None) -> str:
    """``host H, pid P, since S (Ray job J, Slurm job K), renewed N s ago``."""
    jobs = [f"{name} job {holder[key]}" for name, key in (("Ray", "ray_job_id"),
                                                         ("Slurm", "slurm_job_id"))
            if holder.get(key)]
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since "
            f"{holder.get('started', '?')}" + (f" ({', '.join(jobs)})" if jobs else "")
            + (f", renewed {age_s:.0f} s ago" if age_s is not None else ""))


def _env_float(name: str, default: float) -> Callable[[], float]:
    return lambda: float(os.environ.get(name) or default)


def _exit_lost(message: str) -> None:
    """Stops the whole process now, from any thread, without any clean-up that writes."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(LOST_EXIT)


@dataclasses.dataclass
class FolderLock:
    """The exclusive right to drive the experiment in ``folder``.

    Use as a context manager (or :meth:`acquire` / :meth:`release`); :meth:`acquire` raises
    :class:`FolderLocked` while another live driver holds it. ``on_lost(message)`` runs when
    the lock is lost (default: print and exit the process with :data:`LOST_EXIT`).
    """

    folder: Path
    heartbeat_s: float = dataclasses.field(default_factory=_env_float(ENV_HEARTBEAT, HEARTBEAT_S))
    stale_after_s: float = dataclasses.field(
        default_factory=_env_float(ENV_STALE, STALE_AFTER_S))
    log: Any = dataclasses.field(default=sys.stderr)  # where takeovers are announced
    on_lost: Callable[[str], None] = _exit_lost
    _token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _fd: int | None = None
    _id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file this holder made
    _renewed: float = 0.0  # time.monotonic() of the last renewal
    _renewing: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _unguard: Callable[[], None] | None = None
    lost: str | None = None  # why the lock was lost, once it was

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        body = {"host": host(), "pid": os.getpid(), "pid_start": pid_start(os.getpid()),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **_job_ids(),
                "command": " ".join(sys.argv), "token": self._token}
        for _ in range(5):  # a takeover racing another one (or a renewal) may need a second look
            if self._create(body):
                break
            holder, mtime, ident = self._look()
            if holder is None:  # released meanwhile
                continue
            age = fs_now(self.folder) - mtime
            reason = self._gone(holder, age)
            if reason is None:
                raise FolderLocked(self._refusal(holder, age))
            if self._take_over(body, holder, mtime, ident, reason, age):
                break
        else:
            holder, mtime, _ = self._look()
            raise FolderLocked(self._refusal(holder or {}, fs_now(self.folder) - (mtime or 0)))
        self._renewed = time.monotonic()
        self._unguard = files.guard_writes(self._before_write)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="folder-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stops the renewals and removes the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self._unguard is not None:
            self._unguard()
            self._unguard = None
        with contextlib.suppress(OSError):
            if self._id is not None and self._current_id() == self._id:
                self.path.unlink()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = self._id = None

    def read(self) -> dict[str, Any]:
        """The holder's record; ``{}`` where there is no lock, and ``{"unreadable": ...}``
        where a body is missing or cut (a holder killed while writing it)."""
        return self._look()[0] or {}

    def _look(self) -> tuple[dict[str, Any] | None, float, tuple[int, int] | None]:
        """The lock's body, mtime and identity, read from one open file; None where absent."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return None, 0.0, None
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            body = {"unreadable": text[:200]}
        return body, st.st_mtime, (st.st_dev, st.st_ino)

    def _current_id(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def _create(self, body: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return False
        self._fd = fd
        st = os.fstat(fd)
        self._id = (st.st_dev, st.st_ino)
        os.write(fd, json.dumps(body, indent=1).encode())
        os.fsync(fd)
        return True

    def _gone(self, holder: dict[str, Any], age: float) -> str | None:
        """Why the holder is gone, or None while it may be alive (``age``: seconds since its
        last renewal, on the file system's clock)."""
        if "unreadable" in holder:  # cut while written, or still being written
            if age > self.stale_after_s:
                return "its lock file is unreadable and was last written long ago"
            return None
        ours = _job_ids()
        if (ours["slurm_job_id"] and holder.get("slurm_job_id") == ours["slurm_job_id"]
                and holder.get("slurm_restart_count") != ours["slurm_restart_count"]):
            return (f"this is the same Slurm job {ours['slurm_job_id']}, requeued (restart "
                    f"{holder.get('slurm_restart_count')} -> {ours['slurm_restart_count']}): "
                    "Slurm ended its earlier run")
        pid = holder.get("pid")
        if holder.get("host") == host() and isinstance(pid, int):
            if not _pid_alive(pid):
                return f"its pid {pid} is not running on this host"
            now_start = pid_start(pid)
            if holder.get("pid_start") and now_start and now_start != holder["pid_start"]:
                return f"its pid {pid} now belongs to another process (the pid was reused)"
            return None
        if age > self.stale_after_s:
            return (f"its lock was last renewed {age:.0f} s ago, over the {self.stale_after_s:.0f}"
                    f" s limit (host {holder.get('host', '?')} lost, or its driver killed)")
        return None

    def _take_over(self, body: dict[str, Any], holder: dict[str, Any], mtime: float,
                   ident: tuple[int, int] | None, reason: str, age: float) -> bool:
        """Replaces a gone holder's lock, one taker at a time (an ``O_EXCL`` guard file);
        whether the lock is now ours."""
        guard = self.path.with_name(LOCK_NAME + ".takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # a taker that died mid-takeover
                if fs_now(self.folder) - guard.stat().st_mtime > self.stale_after_s:
                    guard.unlink()
            time.sleep(0.5)
            return False
        try:
            # moved aside first: a holder that renewed since it was judged keeps its lock
            aside = self.path.with_name(f"{LOCK_NAME}.taken-{self._token}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return False
            st = os.stat(aside)
            if (st.st_dev, st.st_ino) != ident or st.st_mtime != mtime:
                try:
                    os.link(aside, self.path)
                except OSError:
                    with contextlib.suppress(OSError):  # no hard links here: move it back
                        if not self.path.exists():
                            os.rename(aside, self.path)
                with contextlib.suppress(FileNotFoundError):
                    aside.unlink()
                return False
            aside.unlink()
            print(f"taking over the lock of {self.folder}: the driver that held it ("
                  f"{describe(holder, age)}) is gone: {reason}", file=self.log, flush=True)
            return self._create(body)
        finally:
            guard.unlink()

    def _refusal(self, holder: dict[str, Any], age: float) -> str:
        if "unreadable" in holder:
            who = "a driver whose lock file is being written"
        else:
            who = f"another driver: {describe(holder, age)}"
        remedy = ("wait for it to finish, or stop it"
                  + (f" (scancel {holder['slurm_job_id']})" if holder.get("slurm_job_id")
                     else f" (kill {holder['pid']} on {holder.get('host')})"
                     if holder.get("pid") else ""))
        return (f"{self.folder} is in use by {who}. Two drivers on one folder would train the "
                f"same trials twice and race on its files. {remedy[0].upper()}{remedy[1:]}, "
                f"then rerun this command to resume; a lock whose driver is gone is taken over "
                f"automatically (its pid dead on its host, the same Slurm job requeued, or not "
                f"renewed for {self.stale_after_s:.0f} s). Lock file: {self.path}")

    def _renew(self) -> None:
        """Sets the lock's mtime, then checks that its name still leads to this holder's
        file. Raises :class:`_Lost` if not, ``OSError`` where the file system fails."""
        with self._renewing:
            if self._fd is None:
                return
            touch_fd(self._fd)
            for attempt in range(3):  # missing for a moment: a taker giving it back
                try:
                    current = self._current_id()
                except FileNotFoundError:
                    current = None
                if current == self._id:
                    self._renewed = time.monotonic()
                    return
                if current is not None or attempt == 2:
                    break
                time.sleep(0.2)
            holder, mtime, _ = self._look()
            raise _Lost("another driver took it over after this one was paused longer than "
                        f"the {self.stale_after_s:.0f} s limit (a hung file system, a "
                        "suspended job)" + (f"; it is now held by {describe(holder)}"
                                            if holder else "; it is now removed"))

    def _lose(self, reason: str) -> None:
        self.lost = reason
        self._stop.set()
        self.on_lost(
            f"this driver lost the lock of {self.folder}: {reason}. It stopped at once, "
            "writing nothing more, so that two drivers never train the same trials or race on "
            "the folder's files. If no other driver runs it now, rerun this command to resume.")

    def _before_write(self, path: Path) -> None:
        """Before a write of the driver: after a pause (no renewal for two periods), the
        lock is renewed first, so that a driver that lost it writes nothing."""
        if self.lost is None and time.monotonic() - self._renewed > 2 * self.heartbeat_s:
            try:
                self._renew()
            except _Lost as e:
                self._lose(str(e))
            except OSError:
                pass  # the heartbeat retries and stops the driver if it stays so
        if self.lost is not None:
            raise LockLost(f"{path} not written: this driver lost the lock of {self.folder}: "
                           f"{self.lost}")

    def _beat(self) -> None:
        """Renews the lock until released. I/O errors (a full disk, a quota, a stale NFS
        handle) are retried; a lock not renewed for half the stale limit, or taken over,
        stops the driver before another one can take it."""
        failing: OSError | None = None
        while not self._stop.wait(self.heartbeat_s / (4 if failing else 1)):
            try:
                self._renew()
            except _Lost as e:
                self._lose(str(e))
                return
            except OSError as e:
                if failing is None:
                    print(f"warning: could not renew the lock of {self.folder} "
                          f"({errno.errorcode.get(e.errno, e.errno)}: {e}); retrying",
                          file=self.log, flush=True)
                failing = e
                if time.monotonic() - self._renewed > self.stale_after_s / 2:
                    self._lose(f"it could not renew its lock for {self.stale_after_s / 2:.0f} s "
                               f"({e}), so another driver could soon take the folder over. "
                               "Check the file system (space, quota, the mount), then rerun "
                               "this command")
                    return
                continue
            if failing is not None:
                print(f"the lock of {self.folder} is renewed again", file=self.log, flush=True)
                failing = None
