"""Shared test settings: JAX on CPU, float32 matmuls at full precision for numeric comparisons."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tune reuses trial actors in the suite's runs: a fresh actor per trial (the default, so that
# the dashboard names each trial; tuner.service.stages.reuse_actors) costs a worker start per
# trial, ~11 s on a shared 2-core machine, which CI's many one-rate trials cannot afford.
# tests/test_dashboard.py runs the default.
os.environ.setdefault("TUNER_REUSE_ACTORS", "1")


# The suite runs in one process: the modules that start a local Ray cluster (service, viewer,
# task smokes, Slurm, search) must never run two clusters at once (on a 2-core machine they
# stall and kill each other's trials), and they share one tiny run (``tiny_reference``).


@pytest.fixture(scope="session", autouse=True)
def shared_compile_cache(tmp_path_factory):
    """One JAX compilation cache for every experiment the session runs (``--compile-cache``,
    passed by ``tiny_run.cli``): the first run compiles the tiny programs, the others read
    them, as experiments of one shape do on a cluster that shares the folder."""
    from tiny_run import COMPILE_CACHE_ENV

    path = tmp_path_factory.mktemp("jax_cache")
    before = os.environ.get(COMPILE_CACHE_ENV)
    os.environ[COMPILE_CACHE_ENV] = str(path)
    yield path
    if before is None:
        os.environ.pop(COMPILE_CACHE_ENV, None)
    else:
        os.environ[COMPILE_CACHE_ENV] = before


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    """``tests/fixtures/tiny.yaml`` run once through ``python -m tuner.run``, after its
    ``--pilot`` (so the run prints its times against the projection): (experiment folder, the
    two commands' output). Read by the service and viewer tests; tests that change a folder
    copy it first."""
    from tiny_run import cli, finish

    out = tmp_path_factory.mktemp("reference")
    pilot = finish(cli(out, "--pilot"))
    return out / "tiny", pilot + finish(cli(out))
