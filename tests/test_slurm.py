"""The Ray cluster on Slurm, against a real Slurm (`.ci/slurm_setup.sh` starts one).

Skipped only where Slurm is missing and `CI` is unset; in CI a missing Slurm fails the tests.
The cluster test brings up the real thing with `ray up -y` from a small variant of cluster.yaml
(head with 0 CPUs, one 1-CPU worker type, max_workers 1), runs a Tune job on the Slurm worker,
cancels that worker mid-run, and checks that the job still finishes on the replacement and
that `ray down -y` leaves no job in `squeue`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_run import COMPILE_CACHE_ENV

from tuner.slurm.runner import HeadProcesses

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
TUNE_JOB = Path(__file__).with_name("slurm_tune_job.py")


def _slurm_ready() -> str:
    """Returns why Slurm is unusable here, or an empty string if it answers."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "Slurm commands not installed"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()}"
    if not {"idle", "mix", "alloc"} & set(proc.stdout.split()):
        return f"no usable Slurm node (states: {proc.stdout.split()})"
    return ""


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    """Fails in CI, skips elsewhere, when there is no running Slurm."""
    reason = _slurm_ready()
    if not reason:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI is set but Slurm is not usable: {reason} (run .ci/slurm_setup.sh)")
    pytest.skip(reason)


def _queue(prefix: str) -> dict[str, str]:
    """This user's jobs whose name starts with `prefix`: {job id: state}."""
    out = subprocess.run(
        ["squeue", "-h", "-u", os.environ.get("USER") or _user(), "-o", "%i|%j|%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = (line.split("|") for line in out.splitlines() if line.strip())
    return {job_id: state for job_id, name, state in jobs if name.startswith(prefix)}


def _user() -> str:
    import getpass

    return getpass.getuser()


def _wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_name(tag: str) -> str:
    return f"t{os.getpid() % 100000}{tag}"


# (1) The provider against sbatch / squeue / scancel --------------------------------------


@pytest.fixture
def fake_ray(tmp_path: Path) -> Path:
    """A stand-in `ray` that records its arguments and environment and then idles.

    The provider test needs jobs that stay in the queue without a head to join.
    """
    script = tmp_path / "fake_ray"
    script.write_text(
        "#!/bin/bash\n"
        f'echo "$@" > {tmp_path}/args-$SLURM_JOB_ID\n'
        f"env > {tmp_path}/env-$SLURM_JOB_ID\n"
        'echo "Ray runtime started."\n'
        "exec sleep 300\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.timeout(120)
def test_provider_creates_lists_and_terminates_jobs(tmp_path: Path, fake_ray: Path) -> None:
    from ray.autoscaler.tags import (
        NODE_KIND_WORKER,
        TAG_RAY_LAUNCH_REQUEST,
        TAG_RAY_NODE_KIND,
        TAG_RAY_USER_NODE_TYPE,
    )

    from tuner.slurm.provider import SlurmNodeProvider

    name = _cluster_name("p")
    config = {
        "type": "external",
        "module": "tuner.slurm.provider.SlurmNodeProvider",
        "head_ip": "127.0.0.1",
        "state_dir": str(tmp_path / "state"),
        "ray_command": str(fake_ray),
    }
    provider = SlurmNodeProvider(config, name)
    tags = {
        TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
        TAG_RAY_USER_NODE_TYPE: "cpu",
        TAG_RAY_LAUNCH_REQUEST: "req-1",
    }
    os.environ["RAY_OVERRIDE_RESOURCES"] = '{"CPU": 0}'  # the head's; must not reach workers
    try:
        created = provider.create_node_with_resources_and_labels(
            {"sbatch": {"time": "00:05:00"}}, tags, 2, {"CPU": 1, "custom": 2}, {}
        )
    finally:
        del os.environ["RAY_OVERRIDE_RESOURCES"]
    assert created is not None
    job_a, job_b = sorted(created)
    try:
        # Listed, tagged, visible in squeue under the cluster's job name.
        workers = provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
        assert sorted(workers) == [job_a, job_b]
        assert provider.node_tags(job_a)[TAG_RAY_LAUNCH_REQUEST] == "req-1"
        assert set(_queue(f"ray-{name}-cpu")) == {job_a, job_b}
        assert provider.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "gpu"}) == []

        _wait_for(lambda: provider.is_running(job_a), 60, f"job {job_a} to run")
        assert provider.internal_ip(job_a)
        _wait_for(lambda: (tmp_path / f"env-{job_a}").exists(), 30, "the worker to start ray")
        env = dict(
            line.split("=", 1)
            for line in (tmp_path / f"env-{job_a}").read_text().splitlines()
            if "=" in line
        )
        assert env["RAY_CLOUD_INSTANCE_ID"] == job_a
        assert env["RAY_NODE_TYPE_NAME"] == "cpu"
        assert env["RAY_AUTH_MODE"] == "token"
        assert "RAY_OVERRIDE_RESOURCES" not in env
        assert "RAY_AUTH_TOKEN" not in env  # the token travels by file only
        args = (tmp_path / f"args-{job_a}").read_text().split()
        assert args[:4] == ["start", "--address=127.0.0.1:6379", "--block", "--disable-usage-stats"]
        assert "--num-cpus=1" in args
        assert '--resources={"custom":2}' in args

        # Terminated through the provider: scancel'd and gone from the listing.
        provider.terminate_node(job_a)
        assert job_a not in provider.non_terminated_nodes({})
        assert provider.is_terminated(job_a)

        # Killed behind the provider's back (Slurm preemption, scancel by hand): reported
        # terminated, which is what makes the autoscaler replace it.
        subprocess.run(["scancel", job_b], check=True)
        _wait_for(lambda: provider.is_terminated(job_b), 30, f"job {job_b} to be terminated")
        assert provider.non_terminated_nodes({}) == []

        # A job of this cluster the state file does not know still counts for teardown.
        orphan = subprocess.run(
            ["sbatch", "--parsable", f"--job-name=ray-{name}-cpu", "--time=00:05:00"]
            + ["--output=/dev/null", "--wrap=sleep 300"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        provider._queue_time = -1.0
        assert orphan in provider.nodes_for_teardown({TAG_RAY_NODE_KIND: NODE_KIND_WORKER})
        provider.terminate_nodes([orphan])
        _wait_for(lambda: not _queue(f"ray-{name}-"), 30, "the queue to empty")
    finally:
        leftover = list(_queue(f"ray-{name}-"))
        if leftover:
            subprocess.run(["scancel", *leftover], check=False)


# (2) ray up / Tune on a Slurm worker / scancel / ray down --------------------------------


class Cluster:
    """A test cluster from a variant of cluster.yaml, driven through the `ray` CLI.

    Args:
        tmp_path: Where the yaml, HOME (token, bootstrap config), state and results go.
    """

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.name = _cluster_name("c")
        self.gcs_port = _free_port()
        self.dashboard_port = _free_port()
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.yaml = tmp_path / "cluster.yaml"
        self.yaml.write_text(yaml.safe_dump(self._config()))
        self.timings: dict[str, float] = {}
        self.marker = f"{self.name}@{(tmp_path / 'state').resolve()}"

    def _config(self) -> dict:
        config = yaml.safe_load((REPO / "cluster.yaml").read_text())
        config["cluster_name"] = self.name
        config["max_workers"] = 1
        config["idle_timeout_minutes"] = 5
        config["provider"]["state_dir"] = str(self.tmp / "state")
        config["provider"]["head_port"] = self.gcs_port
        config["provider"]["auth_token_path"] = str(self.home / ".ray" / "auth_token")
        head = config["available_node_types"]["head"]
        assert head["resources"] == {"CPU": 0}
        config["available_node_types"] = {
            "head": head,
            "cpu": {
                "resources": {"CPU": 1},
                "min_workers": 0,
                "max_workers": 1,
                "node_config": {"sbatch": {"time": "00:10:00"}},
            },
        }
        start = config["head_start_ray_commands"][-1]
        assert "--dashboard-host=127.0.0.1" in start
        assert "RAY_AUTH_MODE=token" in start
        config["head_start_ray_commands"][-1] = start.replace(
            "--port=6379",
            f"--port={self.gcs_port} --dashboard-port={self.dashboard_port}"
            f" --ray-client-server-port={_free_port()}",
        )
        return config

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["HOME"] = str(self.home)
        env["PATH"] = str(Path(RAY).parent) + os.pathsep + env.get("PATH", "")
        env["RAY_AUTH_MODE"] = "token"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def ray(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = subprocess.run(
            [RAY, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        self.timings[f"ray {args[0]}"] = round(time.monotonic() - started, 1)
        assert proc.returncode == 0, f"ray {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def submit(self, entrypoint: list[str], log: Path) -> subprocess.Popen[str]:
        """`ray job submit` through the loopback-only job API, with the token."""
        argv = [RAY, "job", "submit", f"--address=http://127.0.0.1:{self.dashboard_port}"]
        return subprocess.Popen(
            [*argv, "--", *entrypoint],
            env=self.env(),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )

    def workers(self) -> dict[str, str]:
        return _queue(f"ray-{self.name}-")


def tune_entrypoint(tmp: Path) -> list[str]:
    """The job the cluster runs; swap for `python -m tuner.run <exp> --smoke` later."""
    return [
        sys.executable,
        str(TUNE_JOB),
        f"--storage={tmp / 'tune'}",
        f"--progress={tmp / 'progress.jsonl'}",
        "--trials=3",
        "--iters=5",
        "--sleep-s=1",
    ]


def _progress(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process a plain `ray stop` would kill (its command line names a Ray worker).

    Another Ray session of the same user on the login node must survive `ray up`/`ray down`.
    """
    proc = subprocess.Popen(["bash", "-c", "sleep 600", "default_worker.py"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def cluster(tmp_path: Path, bystander: subprocess.Popen[bytes]) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        try:
            cluster.ray("down", "-y", str(cluster.yaml), timeout_s=120)
            print(f"\ntimings: {cluster.timings}")
            assert bystander.poll() is None, "ray down must stop only this cluster's head"
            assert not HeadProcesses(cluster.marker).find(), "head processes left running"
        finally:
            leftover = list(cluster.workers())
            if leftover:  # never leave jobs behind, even when `ray down` failed
                time.sleep(5)
                leftover = list(cluster.workers())
                subprocess.run(["scancel", *leftover], check=False)
            assert not leftover, f"ray down left Slurm jobs behind: {leftover}"


def ray_up(cluster: Cluster) -> None:
    """`ray up` the test cluster: the token is private and the head holds no Slurm job."""
    cluster.ray("up", "-y", str(cluster.yaml), timeout_s=120)
    token = cluster.home / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o077 == 0, "auth token must be private"
    assert not cluster.workers(), "the head needs no Slurm job; workers come with demand"


@pytest.mark.extended  # the service test below covers ray up / scancel / completion / ray down
@pytest.mark.timeout(300)
def test_ray_up_tune_on_slurm_worker_survives_scancel(
    cluster: Cluster, bystander: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    t0 = time.monotonic()
    ray_up(cluster)

    log = tmp_path / "job.log"
    job = cluster.submit(tune_entrypoint(tmp_path), log)
    progress = tmp_path / "progress.jsonl"
    try:
        # Mid-run: the first worker has reported at least two iterations. Cancel it.
        _wait_for(lambda: len(_progress(progress)) >= 2, 120, "trial progress on a worker")
        t_first = time.monotonic() - t0
        first = _progress(progress)[-1]["instance"]
        assert cluster.workers().get(first) == "RUNNING"
        subprocess.run(["scancel", first], check=True)
        t_cancel = time.monotonic()

        def replacement() -> str:
            return next((j for j, s in cluster.workers().items() if j != first), "")

        second = _wait_for(replacement, 60, "a replacement worker job")
        t_replaced = time.monotonic() - t_cancel
        _wait_for(
            lambda: any(p["instance"] == second for p in _progress(progress)),
            90,
            "trials to resume on the replacement",
        )
        t_resumed = time.monotonic() - t_cancel
        assert job.wait(timeout=150) == 0, log.read_text()[-4000:]
    finally:
        if job.poll() is None:
            job.kill()

    lines = _progress(progress)
    driver = json.loads(progress.with_suffix(".driver.json").read_text())
    # Every iteration ran on a Slurm-launched worker, never on the head (0 CPUs).
    assert all(p["node_id"] != driver["node_id"] for p in lines)
    assert {p["instance"] for p in lines} == {first, second}
    # The trial cut short by the cancel resumed from its checkpoint, not from scratch.
    assert any(p["instance"] == second and p["restored_from"] > 0 for p in lines), lines
    finals = {p["trial"]: p["iter"] for p in lines}
    assert len(finals) == 3 and set(finals.values()) == {5}

    assert bystander.poll() is None, "ray up must not stop other Ray processes on the host"
    print(
        f"\ntimings: {cluster.timings} first-progress={t_first:.1f}s "
        f"replacement-submitted={t_replaced:.1f}s resumed={t_resumed:.1f}s "
        f"total={time.monotonic() - t0:.1f}s"
    )


TINY = REPO / "tests" / "fixtures" / "tiny.yaml"


def _status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.timeout(900)
def test_smoke_experiment_runs_on_slurm_workers_and_survives_scancel(
    cluster: Cluster, tmp_path: Path
) -> None:
    """`ray job submit -- python -m tuner.run <experiment>` on the Slurm cluster: the service
    joins the cluster ($RAY_ADDRESS), its trials run on Slurm-launched workers (the head has 0
    CPUs, so they can run nowhere else), the worker is cancelled mid-search, and the experiment
    still completes, with every trial of every cell and a report."""
    t0 = time.monotonic()
    ray_up(cluster)
    out = tmp_path / "exps"
    log = tmp_path / "service.log"
    # W&B off (tests/test_service.py checks it); the session's compilation cache: the workers
    # run on this machine, as a cluster's nodes share a disk
    job = cluster.submit([sys.executable, "-m", "tuner.run", str(TINY), "--out", str(out),
                          "--no-wandb", "--compile-cache", os.environ[COMPILE_CACHE_ENV]], log)
    root = out / "tiny"
    try:
        # 600: a loaded 2-core machine runs the head, the worker and the driver
        _wait_for(lambda: _status(root / "status.json").get("trials_finished", 0) >= 2, 600,
                  "search trials finished on a Slurm worker")
        first = next(iter(cluster.workers()))
        subprocess.run(["scancel", first], check=True)
        t_cancel = time.monotonic()
        second = _wait_for(
            lambda: next((j for j in cluster.workers() if j != first), ""), 180,
            "a replacement worker job")
        assert job.wait(timeout=600) == 0, log.read_text()[-6000:]
    finally:
        if job.poll() is None:
            job.kill()
    text = log.read_text()
    assert "Started a local Ray instance" not in text  # it joined the Slurm cluster
    best = json.loads((root / "search_best.json").read_text())
    assert set(best) == {"patch=1", "patch=4"}
    trials = pd.read_csv(root / "search_trials.csv")
    assert trials.groupby("cell").size().to_dict() == {"patch=1": 10, "patch=4": 10}
    finals = json.loads((root / "finals.json").read_text())
    assert len(finals) == 4 and all(r["step"] == 60 for r in finals)
    assert "## Verdict" in (root / "report" / "summary.md").read_text()
    print(f"\nslurm smoke experiment: replacement job {second}, total "
          f"{time.monotonic() - t0:.0f}s, after cancel {time.monotonic() - t_cancel:.0f}s")
