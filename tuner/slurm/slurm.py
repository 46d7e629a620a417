"""A thin, typed wrapper around the Slurm commands the node provider needs.

Kept free of Ray imports so that it can be tested and reused on its own: the provider decides
*what* to do, this module only knows *how* to ask Slurm (`sbatch`, `squeue`, `scancel`).
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Job states after which the job will never run Ray again. COMPLETING (CG) is included: the job
#: is already being torn down, and waiting for it would only delay its replacement.
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)


class SlurmError(RuntimeError):
    """A Slurm command failed; the message carries its stderr."""


@dataclass(frozen=True)
class SlurmJob:
    """One line of `squeue`: what the provider needs to know about a job.

    Attributes:
        job_id: Slurm's job id, which is also the Ray cloud instance id of the worker.
        name: The job name (`ray-<cluster>-<node type>`).
        state: Long state name, e.g. PENDING, RUNNING, COMPLETING.
        nodelist: Host(s) the job runs on; empty or a reason while pending.
    """

    job_id: str
    name: str
    state: str
    nodelist: str

    @property
    def alive(self) -> bool:
        """Whether the job is pending or running (not finished, not being torn down)."""
        return self.state not in TERMINAL_STATES

    @property
    def running(self) -> bool:
        """Whether the job holds its allocation and runs its script."""
        return self.state == "RUNNING"

    @property
    def host(self) -> str:
        """The (first) host of a running job, or an empty string."""
        if not self.running or not self.nodelist:
            return ""
        return self.nodelist.split(",")[0]


@dataclass(frozen=True)
class JobRequest:
    """Everything `sbatch` needs to start one worker job.

    Attributes:
        name: Job name shown by `squeue`.
        script: Path of the batch script to run.
        options: `sbatch` long options without the dashes, e.g. {"partition": "gpu"}; an empty
            value gives a bare flag (e.g. {"exclusive": ""}).
        extra_args: Raw extra `sbatch` arguments appended verbatim.
        env: The complete environment given to `sbatch` (exported into the job).
        script_args: Arguments of the batch script (visible to all users: no secrets).
    """

    name: str
    script: str
    options: Mapping[str, str]
    extra_args: Sequence[str]
    env: Mapping[str, str]
    script_args: Sequence[str] = ()

    def argv(self) -> list[str]:
        """The `sbatch` command line (never contains secrets: those travel by file)."""
        argv = ["sbatch", "--parsable", f"--job-name={self.name}"]
        for key, value in self.options.items():
            argv.append(f"--{key}={value}" if value != "" else f"--{key}")
        argv += list(self.extra_args)
        argv.append(self.script)
        argv += list(self.script_args)
        return argv


class SlurmClient:
    """Runs Slurm commands for one user, retrying briefly when slurmctld is busy.

    Args:
        user: Whose jobs `squeue` lists; defaults to the current user.
        retries: How often to retry a failing command (slurmctld may time out under load).
        timeout_s: Timeout of each command.
    """

    def __init__(self, user: str | None = None, retries: int = 3, timeout_s: float = 30.0):
        self.user = user or getpass.getuser()
        self.retries = retries
        self.timeout_s = timeout_s

    def submit(self, request: JobRequest) -> str:
        """Submits a job and returns its id.

        Not retried: a retry after a timeout could submit the job twice.
        """
        out = self._run(request.argv(), env=dict(request.env), retry=False)
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"unexpected sbatch output: {out!r}")
        logger.info("Submitted Slurm job %s (%s)", job_id, request.name)
        return job_id

    def cancel(self, job_ids: Iterable[str]) -> None:
        """Cancels jobs; ids that are already gone are ignored by `scancel`."""
        ids = sorted(set(job_ids))
        if ids:
            self._run(["scancel", *ids])
            logger.info("Cancelled Slurm jobs %s", ", ".join(ids))

    def jobs(self, name_prefix: str) -> dict[str, SlurmJob]:
        """Lists the user's jobs whose name starts with `name_prefix`, keyed by job id."""
        out = self._run(["squeue", "-h", "-u", self.user, "-o", "%i|%j|%T|%N"])
        jobs: dict[str, SlurmJob] = {}
        for line in out.splitlines():
            parts = line.strip().split("|", 3)
            if len(parts) != 4 or not parts[1].startswith(name_prefix):
                continue
            job = SlurmJob(job_id=parts[0], name=parts[1], state=parts[2], nodelist=parts[3])
            jobs[job.job_id] = job
        return jobs

    def _run(self, argv: list[str], env: dict[str, str] | None = None, retry: bool = True) -> str:
        attempts = self.retries if retry else 1
        last = ""
        for attempt in range(attempts):
            try:
                proc = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_s,
                    env=env if env is not None else os.environ.copy(),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                last = f"timed out after {self.timeout_s}s"
            else:
                if proc.returncode == 0:
                    return proc.stdout
                last = proc.stderr.strip() or f"exit code {proc.returncode}"
            if attempt + 1 < attempts:
                time.sleep(1.0 + attempt)
        raise SlurmError(f"{argv[0]} failed: {last}")
