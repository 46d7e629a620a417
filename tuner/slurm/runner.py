"""A command runner that executes on the local host instead of over SSH.

The head runs where `ray up` is called, so every command the cluster launcher sends to "the
head" (`uptime`, `mkdir`, copying the bootstrap config, `head_start_ray_commands`, `ray stop` from
`ray down`) can simply run here. Workers never receive commands: they are batch jobs that start
Ray themselves (`disable_node_updaters: true`), so no SSH between nodes is ever needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from ray.autoscaler.command_runner import CommandRunnerInterface


class LocalCommandRunner(CommandRunnerInterface):
    """Runs the launcher's commands with `bash -c` on this host.

    The Python environment that runs `ray up` is put first on PATH, so `ray` in
    `head_start_ray_commands` is the same installation (with this project importable) even when
    the user called `.venv/bin/ray up` without activating the environment.

    Args:
        log_prefix: Prefix Ray uses in its log lines.
        node_id: The node the commands are meant for (always the local head).
    """

    def __init__(self, log_prefix: str, node_id: str):
        self.log_prefix = log_prefix
        self.node_id = node_id

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
        env = self._environment(environment_variables or {})
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
