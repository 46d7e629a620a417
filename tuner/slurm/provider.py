"""Ray autoscaler node provider that runs worker nodes as Slurm batch jobs.

Ray 2.60 ships no Slurm provider, so `cluster.yaml` names this class as an `external` provider.
Ray's autoscaler (v2, in the head's monitor process) keeps deciding how many workers of each
type the pending work needs; this provider only translates its requests:

* create a worker  -> `sbatch tuner/slurm/worker.sh ray start --address=<head> --block ...`
* list workers     -> `squeue` (a job that Slurm cancelled, preempted or timed out disappears,
                      the autoscaler sees the node terminated and launches a replacement)
* terminate        -> `scancel`

The head is not a Slurm job: it runs where `ray up` is called (normally a login node), and
every command for it runs locally (`LocalCommandRunner`), so there is no SSH anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    TAG_RAY_NODE_KIND,
    TAG_RAY_USER_NODE_TYPE,
)

from tuner.slurm.runner import HEAD_MARKER, LocalCommandRunner
from tuner.slurm.slurm import JobRequest, SlurmClient, SlurmJob
from tuner.slurm.state import NodeStateStore, NodeTable

logger = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("worker.sh")

#: Resources that `ray start` takes as dedicated flags rather than in `--resources`.
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class ProviderSettings:
    """The `provider:` section of cluster.yaml, with defaults filled in.

    Attributes:
        cluster_name: `cluster_name` from the yaml; names jobs and the state file.
        head_ip: Address workers use to reach the head's GCS; defaults to the address Ray
            itself picks on this host.
        head_port: The head's GCS port (must match `--port` in `head_start_ray_commands`).
        state_dir: Where node tags and worker logs are kept (on the head's file system).
        auth_token_path: Ray token file handed to workers by path; empty disables token auth
            for workers (only sensible if the head runs with auth off).
        drain_timeout_s: How long a worker's `ray start --block` drains after SIGTERM. Ray's
            default is 30 s; a cancelled Slurm job has nothing to drain for, so 0.
        ray_command: The `ray` executable workers run (same environment as the head's).
        worker_setup: Shell lines run in every worker job before `ray start`.
        worker_env: Extra environment variables for every worker job.
    """

    cluster_name: str
    head_ip: str
    head_port: int = 6379
    state_dir: Path = field(default_factory=lambda: Path("~/.ray/slurm").expanduser())
    auth_token_path: str = str(Path("~/.ray/auth_token").expanduser())
    drain_timeout_s: float = 0.0
    ray_command: str = str(Path(sys.executable).with_name("ray"))
    worker_setup: tuple[str, ...] = ()
    worker_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], cluster_name: str) -> ProviderSettings:
        """Reads the provider section; unknown keys are Ray's own and ignored here."""
        kwargs: dict[str, Any] = {"cluster_name": cluster_name}
        kwargs["head_ip"] = config.get("head_ip") or _local_ip()
        if "head_port" in config:
            kwargs["head_port"] = int(config["head_port"])
        if config.get("state_dir"):
            kwargs["state_dir"] = Path(config["state_dir"]).expanduser().resolve()
        if "auth_token_path" in config:
            path = config["auth_token_path"] or ""
            kwargs["auth_token_path"] = str(Path(path).expanduser()) if path else ""
        if "drain_timeout_s" in config:
            kwargs["drain_timeout_s"] = float(config["drain_timeout_s"])
        if config.get("ray_command"):
            kwargs["ray_command"] = str(config["ray_command"])
        kwargs["worker_setup"] = tuple(_as_lines(config.get("worker_setup")))
        kwargs["worker_env"] = {k: str(v) for k, v in (config.get("worker_env") or {}).items()}
        return cls(**kwargs)

    @property
    def job_prefix(self) -> str:
        """Prefix of every job name of this cluster, as `squeue` shows it."""
        return f"ray-{self.cluster_name}-"

    @property
    def head_node_id(self) -> str:
        """Node id of the head, which is no Slurm job and so has no job id."""
        return f"head-{self.cluster_name}"

    @property
    def head_marker(self) -> str:
        """Marks the head's processes, so that `ray stop` for this cluster stops only them."""
        return f"{self.cluster_name}@{self.state_dir}"

    @property
    def log_dir(self) -> Path:
        """Where worker jobs write their output (`ray-<cluster>-<type>-<job id>.out`)."""
        return self.state_dir / "logs" / self.cluster_name


@dataclass(frozen=True)
class WorkerJobSpec:
    """Turns one node type's `node_config` and resources into an `sbatch` request.

    `node_config` of a worker type in cluster.yaml:

        sbatch: {partition: gpu, account: my-lab, time: "04:00:00", ...}  # any sbatch option
        setup: ["module load cuda"]   # shell lines run before `ray start`

    `--cpus-per-task` and `--gres=gpu:<n>` follow from the type's `resources` unless `sbatch`
    sets them, so Slurm allocates exactly what Ray is told the node has.

    Attributes:
        node_type: Name of the node type in `available_node_types`.
        node_config: The type's `node_config`.
        resources: The type's resources as the autoscaler passes them.
        labels: The type's Ray node labels.
    """

    node_type: str
    node_config: Mapping[str, Any]
    resources: Mapping[str, float]
    labels: Mapping[str, str]

    def sbatch_options(self, settings: ProviderSettings) -> dict[str, str]:
        """Slurm options: derived ones first, then the user's (which win)."""
        log = settings.log_dir / f"{settings.job_prefix}{self.node_type}-%j.out"
        options = {"nodes": "1", "ntasks": "1", "no-requeue": "", "output": str(log)}
        cpus = int(self.resources.get("CPU", 0))
        if cpus > 0:
            options["cpus-per-task"] = str(cpus)
        gpus = int(self.resources.get("GPU", 0))
        if gpus > 0:
            options["gres"] = f"gpu:{gpus}"
        for key, value in (self.node_config.get("sbatch") or {}).items():
            flag = str(key).replace("_", "-")
            if value is False or value is None:
                options.pop(flag, None)
            else:
                options[flag] = "" if value is True else str(value)
        return options

    def ray_start_argv(self, settings: ProviderSettings) -> list[str]:
        """The `ray start` command the job runs, declaring this type's resources to Ray."""
        argv = [
            settings.ray_command,
            "start",
            f"--address={settings.head_ip}:{settings.head_port}",
            "--block",
            "--disable-usage-stats",
            f"--num-cpus={int(self.resources.get('CPU', 0))}",
            f"--num-gpus={int(self.resources.get('GPU', 0))}",
        ]
        if "memory" in self.resources:
            argv.append(f"--memory={int(self.resources['memory'])}")
        if "object_store_memory" in self.resources:
            argv.append(f"--object-store-memory={int(self.resources['object_store_memory'])}")
        custom = {k: v for k, v in self.resources.items() if k not in _BUILTIN_RESOURCES}
        if custom:
            argv.append(f"--resources={json.dumps(custom, separators=(',', ':'))}")
        if self.labels:
            argv.append("--labels=" + ",".join(f"{k}={v}" for k, v in self.labels.items()))
        return argv

    def environment(self, settings: ProviderSettings) -> dict[str, str]:
        """The job's environment: this process's, minus Ray's and Slurm's own variables.

        `sbatch` exports the submitting environment into the job. The monitor's environment
        holds the head's `RAY_*` settings (e.g. `RAY_OVERRIDE_RESOURCES={"CPU": 0}`, which
        would make every worker join with no CPUs) and, if the head itself runs inside a job,
        that job's `SLURM_*` variables; so both go, and what a worker needs is set explicitly.
        The head's process marker goes too: a worker on the head's host is no head process.
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_", "SLURM_", "SBATCH_")) and k != HEAD_MARKER
        }
        env["PATH"] = str(Path(settings.ray_command).parent) + os.pathsep + env.get("PATH", "")
        env.update(settings.worker_env)
        env["RAY_NODE_TYPE_NAME"] = self.node_type
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = str(settings.drain_timeout_s)
        if settings.auth_token_path:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN_PATH"] = settings.auth_token_path
        setup = [*settings.worker_setup, *_as_lines(self.node_config.get("setup"))]
        if setup:
            env["TUNER_SLURM_SETUP"] = "\n".join(setup)
        env["TUNER_SLURM_START_LOCK"] = str(settings.state_dir / f"start-{os.getuid()}.lock")
        return env

    def request(self, settings: ProviderSettings) -> JobRequest:
        """The complete `sbatch` request for one worker of this type."""
        return JobRequest(
            name=f"{settings.job_prefix}{self.node_type}",
            script=str(WORKER_SCRIPT),
            options=self.sbatch_options(settings),
            extra_args=[str(a) for a in self.node_config.get("extra_sbatch_args") or []],
            env=self.environment(settings),
            script_args=self.ray_start_argv(settings),
        )


class SlurmNodeProvider(NodeProvider):
    """Ray `NodeProvider` whose worker nodes are Slurm jobs and whose head is the local host.

    Node ids are Slurm job ids for workers and `head-<cluster>` for the head. Ray's tags for
    each node are kept in a JSON state file (`NodeStateStore`) because Slurm cannot store them;
    `squeue` is the truth about which workers still exist, and entries of jobs that left the
    queue (finished, cancelled, preempted, timed out) are dropped on every listing. Dropping is
    what makes the autoscaler replace a killed worker.

    Args:
        provider_config: The `provider:` section of cluster.yaml.
        cluster_name: `cluster_name` from cluster.yaml.
    """

    #: How long one `squeue` answer is reused; the autoscaler asks per node right after listing.
    QUEUE_CACHE_S = 1.0

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self.settings = ProviderSettings.from_config(provider_config, cluster_name)
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        self.slurm = SlurmClient()
        self.store = NodeStateStore(self.settings.state_dir / f"{cluster_name}.json")
        self._queue: dict[str, SlurmJob] = {}
        self._queue_time = -1.0

    # Listing -------------------------------------------------------------------------------

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        """Nodes that are pending or running and match all `tag_filters`."""
        table = self._live_table()
        return [node for node, tags in table.items() if _matches(tags, tag_filters)]

    def nodes_for_teardown(self, tag_filters: dict[str, str]) -> list[str]:
        """Like `non_terminated_nodes`, plus this cluster's jobs the state file forgot.

        `ray down` must leave nothing behind even if the state file was lost or edited, so any
        queued job named `ray-<cluster>-*` counts as a worker to cancel.
        """
        nodes = self.non_terminated_nodes(tag_filters)
        if tag_filters.get(TAG_RAY_NODE_KIND, NODE_KIND_WORKER) == NODE_KIND_WORKER:
            orphans = [job_id for job_id, job in self._jobs().items() if job.alive]
            nodes += [job_id for job_id in orphans if job_id not in nodes]
        return nodes

    def is_running(self, node_id: str) -> bool:
        """Whether the node is up: the head always (while known), a worker once its job runs."""
        if node_id == self.settings.head_node_id:
            return node_id in self.store.read()
        job = self._jobs().get(node_id)
        return job is not None and job.running

    def is_terminated(self, node_id: str) -> bool:
        """Whether the node is gone for good."""
        return node_id not in self._live_table()

    def node_tags(self, node_id: str) -> dict[str, str]:
        """Ray's tags of the node (empty for an unknown node)."""
        return dict(self.store.read().get(node_id, {}))

    def internal_ip(self, node_id: str) -> str:
        """IP of the host the node runs on; a pending worker's job has none yet."""
        if node_id == self.settings.head_node_id:
            return self.settings.head_ip
        job = self._jobs().get(node_id)
        return _resolve(job.host) if job is not None and job.host else ""

    def external_ip(self, node_id: str) -> str:
        """Same as `internal_ip`: everything happens inside the cluster's network."""
        return self.internal_ip(node_id)

    # Changes -------------------------------------------------------------------------------

    def create_node(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int
    ) -> dict[str, Any] | None:
        """Creates the head (from `ray up`) or workers without declared resources."""
        return self.create_node_with_resources_and_labels(node_config, tags, count, {}, {})

    def create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: dict[str, float],
        labels: dict[str, str],
    ) -> dict[str, Any] | None:
        """Registers the local head, or submits `count` worker jobs."""
        if tags.get(TAG_RAY_NODE_KIND) == NODE_KIND_HEAD:
            head = self.settings.head_node_id
            self.store.update(lambda table: table.__setitem__(head, dict(tags)))
            return {head: dict(tags)}
        spec = WorkerJobSpec(
            node_type=tags.get(TAG_RAY_USER_NODE_TYPE, "worker"),
            node_config=node_config,
            resources=resources or node_config.get("resources", {}),
            labels=labels or {},
        )
        request = spec.request(self.settings)
        created: dict[str, Any] = {}
        for _ in range(count):
            job_id = self.slurm.submit(request)
            self.store.update(lambda table, j=job_id: table.__setitem__(j, dict(tags)))
            created[job_id] = dict(tags)
        self._queue_time = -1.0  # the new jobs must show up in the next listing
        return created

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        """Merges `tags` into the node's stored tags."""

        def merge(table: NodeTable) -> None:
            if node_id in table:
                table[node_id].update(tags)

        self.store.update(merge)

    def terminate_node(self, node_id: str) -> dict[str, Any] | None:
        """Terminates one node; see `terminate_nodes`."""
        return self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> dict[str, Any] | None:
        """Cancels worker jobs and forgets the head.

        The head's Ray processes are stopped by the launcher itself (`ray down` runs `ray stop`
        through the command runner before it terminates nodes), so nothing is killed here.
        """
        workers = [n for n in node_ids if n != self.settings.head_node_id]
        self.slurm.cancel(workers)

        def forget(table: NodeTable) -> None:
            for node in node_ids:
                table.pop(node, None)

        self.store.update(forget)
        self._queue_time = -1.0
        return None

    def get_command_runner(
        self,
        log_prefix: str,
        node_id: str,
        auth_config: dict[str, Any],
        cluster_name: str,
        process_runner: Any,
        use_internal_ip: bool,
        docker_config: dict[str, Any] | None = None,
    ) -> LocalCommandRunner:
        """A runner for the head only: it executes on this host, no SSH."""
        return LocalCommandRunner(log_prefix, node_id, self.settings.head_marker)

    # Internals -----------------------------------------------------------------------------

    def _jobs(self) -> dict[str, SlurmJob]:
        now = time.monotonic()
        if now - self._queue_time > self.QUEUE_CACHE_S:
            self._queue = self.slurm.jobs(self.settings.job_prefix)
            self._queue_time = now
        return self._queue

    def _live_table(self) -> NodeTable:
        """The stored table after dropping workers whose jobs are no longer alive."""
        jobs = self._jobs()
        head = self.settings.head_node_id

        def prune(table: NodeTable) -> None:
            for node in list(table):
                if node == head:
                    continue
                job = jobs.get(node)
                if job is None or not job.alive:
                    logger.info("Slurm job %s is gone or ending; node terminated", node)
                    del table[node]

        return self.store.update(prune)


def _matches(tags: Mapping[str, str], tag_filters: Mapping[str, str]) -> bool:
    return all(tags.get(key) == value for key, value in tag_filters.items())


def _as_lines(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    return [str(line) for line in value]


def _local_ip() -> str:
    """The address Ray picks for this host (what `ray start --head` binds the GCS to)."""
    from ray.util import get_node_ip_address

    return get_node_ip_address()


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host
