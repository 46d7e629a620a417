"""Ray started (or joined) for the driver, and a start that fails explained in one line.

Ray's own failures come as a page of its stack (``OSError: validate_socket_filename failed``,
``RuntimeError: Module MetricsHead failed to start``, a ``ConnectionError`` after a long wait);
the usual causes on a cluster are few: a temporary folder whose path leaves no room for Ray's
Unix sockets (a per-job scratch folder), a port in use, an address where no cluster answers.
The first is checked before Ray starts; the others are named from what Ray raised.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

# Linux's AF_UNIX path limit (sun_path less its NUL); macOS has 104
SOCKET_PATH_MAX = (104 if sys.platform.startswith("darwin") else 108) - 1
# what Ray puts under its temporary folder for its longest socket:
# /ray/session_YYYY-MM-DD_HH-MM-SS_ffffff_<pid up to 7 digits>/sockets/dash_TaskEventsHead
SOCKET_SUFFIX = len("/ray/session_2026-01-01_00-00-00_000000_4194304/sockets/dash_TaskEventsHead")


# Read by Ray and Tune when they are imported (module constants), so set by the entry point
# (tuner/run.py) before anything imports them, and again by the driver for other callers.
ENV_DEFAULTS = {
    # under `uv run`, Ray 2.60 would start every worker through `uv run` in a copy of the
    # project (a venv built in its working_dir package): share the driver's environment
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "5",  # snapshot often: lose little
    # every checkpoint forces a snapshot (CheckpointConfig.num_to_keep): wanted, not a warning
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "1",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # see stages._run_config
}


def environment_defaults() -> None:
    """Sets :data:`ENV_DEFAULTS` where the user did not set them."""
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


class RayStartFailed(Exception):
    """Ray could not start or be reached; the message names the cause and the remedy."""


def temp_root() -> tuple[str, str]:
    """The folder a new local Ray cluster puts its session under, and what chose it (as Ray
    2.60 does: ``RAY_TMPDIR``, else ``TMPDIR`` on Linux, else ``/tmp``)."""
    for var in ("RAY_TMPDIR", "TMPDIR"):
        if os.environ.get(var) and (var == "RAY_TMPDIR" or sys.platform.startswith("linux")):
            return os.environ[var], var
    return "/tmp", "the default"


def check_temp_path() -> None:
    """Raises :class:`RayStartFailed` where Ray's sockets would not fit under the temporary
    folder, before Ray starts (it fails there only after seconds, in a page of stack)."""
    root, var = temp_root()
    length = len(str(Path(root).absolute()).rstrip("/").encode())
    if length + SOCKET_SUFFIX > SOCKET_PATH_MAX:
        chosen = f"set by {var}" if var != "the default" else "Ray's default"
        raise RayStartFailed(
            f"Ray cannot start: its temporary folder {root} ({chosen}) is {length} characters "
            f"long, and Ray's Unix sockets under it would pass the {SOCKET_PATH_MAX}-byte "
            f"limit of a socket path; it may be at most {SOCKET_PATH_MAX - SOCKET_SUFFIX} "
            "characters. Set RAY_TMPDIR to a shorter folder (e.g. export RAY_TMPDIR=/tmp) "
            "and rerun this command")


def explain(error: BaseException, address: str | None) -> str:
    """One line naming why Ray did not start, and what to do."""
    text = f"{type(error).__name__}: {error}".strip()
    first = text.splitlines()[0][:300] if text else type(error).__name__
    lowered = text.lower()
    if "af_unix" in lowered or "socket_filename" in lowered:
        root, var = temp_root()
        return (f"Ray cannot start: the path of its temporary folder {root} is too long for "
                f"its Unix sockets ({first}); set RAY_TMPDIR to a folder of at most "
                f"{SOCKET_PATH_MAX - SOCKET_SUFFIX} characters (e.g. export RAY_TMPDIR=/tmp) "
                "and rerun this command")
    if ("address already in use" in lowered or "already occupied" in lowered
            or "port" in lowered and "in use" in lowered):
        return (f"Ray cannot start: a port it needs is in use ({first}); another Ray cluster "
                "or service may run on this machine: pick another --dashboard-port (or leave "
                "it out: Ray then takes the next free one), join a running cluster with "
                "--address auto, or stop it (ray stop), then rerun this command")
    if address:
        return (f"Ray cluster at {address} did not answer ({first}); check that it runs "
                "(`ray status` on its head node) and that the address and port are right "
                "(--address, or $RAY_ADDRESS), or leave --address out to start a local cluster")
    return (f"Ray could not start a local cluster ({first}); its logs are under "
            f"{temp_root()[0]}/ray/session_latest/logs. Stop a leftover cluster (ray stop), "
            "free memory and disk there, then rerun this command")


def check_address(address: str, timeout_s: float = 10.0) -> None:
    """Raises :class:`RayStartFailed` at once where nothing listens at a ``host:port`` address
    (also ``ray://host:port``): Ray itself retries such an address for minutes, printing a
    warning every few seconds. ``auto`` and other forms are left to Ray."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except OSError as e:
        raise RayStartFailed(explain(ConnectionError(f"nothing answers at {hostport}: {e}"),
                                     address)) from None


def start(address: str | None, env: dict[str, str], num_cpus: int | None,
          num_gpus: int | None = None, dashboard_port: int | None = None):
    """``ray.init``: joins the cluster at ``address``, or starts a local one (its dashboard at
    ``dashboard_port``, else Ray's default or the next free port). Raises
    :class:`RayStartFailed` where Ray does not start (the cause and the remedy, no stack)."""
    if not address:
        check_temp_path()
    else:
        check_address(address)
    import ray

    try:
        if address:
            return ray.init(address=address, runtime_env={"env_vars": env})
        # local cluster: dashboard on loopback only; Ray 2.60 turns token auth on for new
        # local clusters (token in ~/.ray/auth_token) unless RAY_AUTH_MODE says otherwise
        return ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                        include_dashboard=True, dashboard_host="127.0.0.1",
                        dashboard_port=dashboard_port)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # Ray raises many kinds here; each is explained, none expected
        message = explain(e, address)
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise RayStartFailed(message) from None
