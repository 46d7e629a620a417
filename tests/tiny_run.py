"""The suite's tiny experiment (``tests/fixtures/tiny.yaml``) run through the real CLI: shared by
the service tests and the viewer's tests (``conftest.tiny_reference`` runs it once a session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TINY = Path(__file__).parent / "fixtures" / "tiny.yaml"
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # a W&B-shaped API key (40 hex)
# a compilation cache the session's runs share (tests/conftest.py): each run of the suite would
# otherwise compile the same tiny programs again (~15 s of a tiny run's 73 s cold)
COMPILE_CACHE_ENV = "TUNER_TEST_COMPILE_CACHE"


def cli(out: Path, *flags: str, log: Path | None = None, experiment: Path = TINY,
        **kw) -> subprocess.Popen:
    """``python -m tuner.run tiny.yaml --out <out>`` (or ``experiment``, a variant of it) on a
    2-CPU local cluster, W&B offline with a fake key set (it must appear nowhere). Output to a
    pipe (read it with :func:`finish`), or to the file ``log`` for a driver that is watched
    while it runs: nobody reads a pipe then, and a full one (64 KiB: Tune's tables) would
    stall the driver."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="offline", PYTHONUNBUFFERED="1",
               WANDB_API_KEY=FAKE_KEY)
    if os.environ.get(COMPILE_CACHE_ENV) and "--compile-cache" not in flags:
        flags = (*flags, "--compile-cache", os.environ[COMPILE_CACHE_ENV])
    stdout = subprocess.PIPE if log is None else log.open("w")
    return subprocess.Popen([sys.executable, "-m", "tuner.run", str(experiment), "--out",
                             str(out), "--num-cpus", "2", *flags], stdout=stdout,
                            stderr=subprocess.STDOUT, text=True, env=env, **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out
