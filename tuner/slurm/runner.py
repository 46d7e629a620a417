"""A command runner that executes on the local host instead of over SSH.

The head runs where `ray up` is called, so every command the cluster launcher sends to "the
head" (`uptime`, `mkdir`, copying the bootstrap config, `head_start_ray_commands`, `ray stop` from
`ray down`) can simply run here. Workers never receive commands: they are batch jobs that start
Ray themselves (`disable_node_updaters: true`), so no SSH between nodes is ever needed.

One command is not run as given: a plain `ray stop` kills every Ray process of the user on the
host, and a login node is shared with the user's other Ray sessions (notebooks, tests, another
cluster). So every command runs with a marker variable naming this cluster, which all processes
of the head inherit, and `ray stop` becomes "stop the processes that carry this cluster's
marker" (`HeadProcesses`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import psutil
from ray.autoscaler.command_runner import CommandRunnerInterface

logger = logging.getLogger(__name__)

#: Environment variable that marks the processes of one cluster's head.
HEAD_MARKER = "TUNER_SLURM_HEAD"

#: `ray stop` as the launcher and cluster.yaml issue it (optionally with --force / -f).
_RAY_STOP = re.compile(r"^\s*ray\s+stop(\s+(--force|-f))?\s*(;|&&)?\s*$")


class HeadProcesses:
    """The processes of one cluster's head on this host, found by their marker variable.

    Args:
        marker: Value of `HEAD_MARKER` that the head's processes inherited.
    """

    def __init__(self, marker: str):
        self.marker = marker

    def find(self) -> list[psutil.Process]:
        """This user's processes that carry the marker (the caller excluded)."""
        found = []
        me = os.getpid()
        uid = os.getuid()
        for proc in psutil.process_iter(["pid", "uids"]):
            try:
                if proc.pid == me or proc.info["uids"].real != uid:
                    continue
                if proc.environ().get(HEAD_MARKER) == self.marker:
                    found.append(proc)
            except (psutil.Error, AttributeError):
                continue
        return found

    def stop(self, grace_s: float = 10.0) -> int:
        """Stops them like `ray stop`: raylet first, GCS last; SIGKILL after `grace_s` each.

        Returns:
            How many processes there were.
        """
        procs = self.find()
        first = [p for p in procs if _name(p) == "raylet"]
        last = [p for p in procs if _name(p) == "gcs_server"]
        middle = [p for p in procs if p not in first and p not in last]
        for bucket in (first, middle, last):
            _terminate(bucket, grace_s)
        logger.info("Stopped %d Ray head processes (%s)", len(procs), self.marker)
        return len(procs)


def _name(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return proc.name()
    return ""


def _terminate(procs: list[psutil.Process], grace_s: float) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


class LocalCommandRunner(CommandRunnerInterface):
    """Runs the launcher's commands with `bash -c` on this host.

    The Python environment that runs `ray up` is put first on PATH, so `ray` in
    `head_start_ray_commands` is the same installation (with this project importable) even when
    the user called `.venv/bin/ray up` without activating the environment.

    Args:
        log_prefix: Prefix Ray uses in its log lines.
        node_id: The node the commands are meant for (always the local head).
        marker: This cluster's head marker (see `HEAD_MARKER`).
    """

    def __init__(self, log_prefix: str, node_id: str, marker: str):
        self.log_prefix = log_prefix
        self.node_id = node_id
        self.marker = marker

    def run(
        self,
        cmd: str | None = None,
        timeout: int = 120,
        exit_on_fail: bool = False,
        port_forward: Any = None,
        with_output: bool = False,
        environment_variables: dict[str, object] | None = None,
        run_env: str = "auto",
        ssh_options_override_ssh_key: str = "",
        shutdown_after_run: bool = False,
    ) -> str:
        """Runs `cmd` locally; see `CommandRunnerInterface.run`."""
        if not cmd:
            return ""
        if _RAY_STOP.match(cmd):
            # Only this cluster's head, not every Ray process of the user on this host.
            HeadProcesses(self.marker).stop()
            return ""
        env = self._environment(environment_variables or {})
        env[HEAD_MARKER] = self.marker
        proc = subprocess.run(
            ["bash", "-c", cmd],
            env=env,
            stdout=subprocess.PIPE if with_output else None,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            message = f"{self.log_prefix}command failed ({proc.returncode}): {cmd}"
            if exit_on_fail:
                sys.exit(message)
            raise subprocess.CalledProcessError(proc.returncode, cmd, output=proc.stdout)
        return proc.stdout if with_output else ""

    def run_rsync_up(self, source: str, target: str, options: Any = None) -> None:
        """Copies a file or directory locally (the "remote" head is this host)."""
        self._copy(source, target)

    def run_rsync_down(self, source: str, target: str, options: Any = None) -> None:
        """Copies a file or directory locally (the "remote" head is this host)."""
        self._copy(source, target)

    def remote_shell_command_str(self) -> str:
        """What `ray attach` would run: a local shell."""
        return "bash\n"

    @staticmethod
    def _environment(extra: dict[str, object]) -> dict[str, str]:
        env = os.environ.copy()
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        for key, value in extra.items():
            # Strings as they are; anything else (e.g. RAY_OVERRIDE_RESOURCES) as one-line JSON.
            env[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return env

    @staticmethod
    def _copy(source: str, target: str) -> None:
        source = os.path.expanduser(source)
        target = os.path.expanduser(target)
        if os.path.abspath(source) == os.path.abspath(target):
            return
        if os.path.isdir(source):
            shutil.copytree(source.rstrip("/"), target, dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            shutil.copyfile(source, target)
