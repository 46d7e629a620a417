"""The suite's tiny experiment (``tests/fixtures/tiny.yaml``) run through the real CLI: shared by
the service tests and the viewer's tests (``conftest.tiny_reference`` runs it once a session).

Most of those runs join one Ray cluster of the session (:class:`SharedCluster`, the fixture
``conftest.shared_ray``) with ``--address``, as drivers join a running cluster (``ray start``,
``ray job submit``) outside the suite: a local cluster of its own costs each run its start and
stop. A run that needs its own cluster (the dashboard test, a logical-GPU cluster) passes none.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

TINY = Path(__file__).parent / "fixtures" / "tiny.yaml"
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # a W&B-shaped API key (40 hex)
# a compilation cache the session's runs share (tests/conftest.py): each run of the suite would
# otherwise compile the same tiny programs again (~15 s of a tiny run's 73 s cold)
COMPILE_CACHE_ENV = "TUNER_TEST_COMPILE_CACHE"


def _env() -> dict[str, str]:
    """A driver's environment, and the shared cluster's (its workers inherit it, as a local
    cluster's workers inherit the driver's): CPU JAX, W&B offline with a fake key set (it must
    appear nowhere)."""
    return dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="offline", PYTHONUNBUFFERED="1",
                WANDB_API_KEY=FAKE_KEY)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (each held until all are found)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _stop_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, killed or not, so that ``ray start
    --block`` stops its cluster then too (Linux's ``PR_SET_PDEATHSIG``)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class SharedCluster:
    """One local Ray cluster (``ray start --head --block``, 2 CPUs like a run's own) that the
    session's drivers join one after another. Every driver starts on a quiet cluster: the
    actors and placement groups of the one before (a killed driver's trials included, which
    Ray kills once it sees their owner gone) are gone first (:meth:`wait_quiet`)."""

    def __init__(self, num_cpus: int = 2):
        # a short path: Ray's Unix sockets live under it (at most 107 bytes)
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        port, dashboard, agent, client = _free_ports(4)
        self.address = f"127.0.0.1:{port}"
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        # free ports, not Ray's defaults, which the clusters of other tests (the dashboard's,
        # the Slurm smoke's) take while this one runs
        self._proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
             "--disable-usage-stats", f"--port={port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={self.temp_dir}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
             f"--ray-client-server-port={client}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # as the CLI sets for its drivers: no uv environment built for every worker
            # token auth, as a driver's own local cluster has (Ray makes ~/.ray/auth_token)
            env=dict(_env(), RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_AUTH_MODE="token"),
            preexec_fn=_stop_with_parent)
        self.wait_quiet()

    def _list(self, resource: str, gone: str) -> list[dict]:
        """The cluster's ``resource`` (actors, placement_groups) whose state is not ``gone``,
        from the dashboard's state API (as ``ray list``), with the cluster's token (the
        client's own helpers read whether to send it from this process's environment)."""
        query = urllib.parse.urlencode({"limit": 10_000, "detail": "true", "filter_keys": "state",
                                        "filter_predicates": "!=", "filter_values": gone})
        token = os.environ.get("RAY_AUTH_TOKEN") or (
            Path.home() / ".ray" / "auth_token").read_text().strip()
        request = urllib.request.Request(f"{self.dashboard}/api/v0/{resource}?{query}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        assert body["result"], body["msg"]
        return body["data"]["result"]["result"]

    def busy(self) -> list[str]:
        """What a driver left running on the cluster: its actors (a detached one, meant to
        outlive its driver, is none's leftover) and placement groups not yet gone."""
        actors = [a for a in self._list("actors", "DEAD") if not a.get("is_detached")]
        groups = self._list("placement_groups", "REMOVED")
        return [f"actor {a['class_name']} {a['state']}" for a in actors] + [
            f"placement group {g['placement_group_id']} {g['state']}" for g in groups]

    def wait_quiet(self, timeout: float = 180) -> None:
        """Returns once the cluster answers and nothing runs on it: a driver starts on it as
        on a cluster of its own. Fails if something outlives ``timeout`` (a killed driver's
        trials that Ray did not stop would then train beside the next driver)."""
        deadline = time.time() + timeout
        busy = ["no answer yet"]
        while time.time() < deadline:
            assert self._proc.poll() is None, "the shared Ray cluster stopped"
            try:
                busy = self.busy()
            except Exception as e:  # starting: the dashboard does not answer yet
                busy = [repr(e)]
            if not busy:
                return
            time.sleep(0.2)
        raise AssertionError(f"the shared Ray cluster is still busy: {busy}")

    def stop(self) -> None:
        """SIGTERM to ``ray start --block``: it stops every process of its cluster (only
        those: ``ray stop`` would stop every cluster on the machine)."""
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def driver_env(cluster: SharedCluster | None) -> dict[str, str]:
    """A driver's environment (:func:`_env`); on ``cluster`` with token auth on: a driver that
    joins a running cluster does not turn it on by itself, and is refused without it."""
    return _env() if cluster is None else dict(_env(), RAY_AUTH_MODE="token")


def cluster_flags(cluster: SharedCluster | None) -> list[str]:
    """The CLI's flags for a run on ``cluster``, once it is quiet, or else on a 2-CPU local
    cluster of the run's own."""
    if cluster is None:
        return ["--num-cpus", "2"]
    cluster.wait_quiet()
    return ["--address", cluster.address]


def settle(cluster: SharedCluster | None) -> None:
    """After a driver was killed: on a shared cluster, waits until Ray has stopped its trials,
    so that none writes to the folder while a test reads it (a cluster of the driver's own
    went with it)."""
    if cluster is not None:
        cluster.wait_quiet()


def cli(out: Path, *flags: str, log: Path | None = None, experiment: Path = TINY,
        cluster: SharedCluster | None = None, **kw) -> subprocess.Popen:
    """``python -m tuner.run tiny.yaml --out <out>`` (or ``experiment``, a variant of it), W&B
    offline with a fake key set (it must appear nowhere): on ``cluster`` once it is quiet, or
    else on a 2-CPU local cluster of its own. Output to a pipe (read it with :func:`finish`),
    or to the file ``log`` for a driver that is watched while it runs: nobody reads a pipe
    then, and a full one (64 KiB: Tune's tables) would stall the driver."""
    if os.environ.get(COMPILE_CACHE_ENV) and "--compile-cache" not in flags:
        flags = (*flags, "--compile-cache", os.environ[COMPILE_CACHE_ENV])
    flags = (*flags, *cluster_flags(cluster))
    stdout = subprocess.PIPE if log is None else log.open("w")
    return subprocess.Popen([sys.executable, "-m", "tuner.run", str(experiment), "--out",
                             str(out), *flags], stdout=stdout, stderr=subprocess.STDOUT,
                            text=True, env=driver_env(cluster), **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out
