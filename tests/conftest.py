"""Shared test settings: JAX on CPU, float32 matmuls at full precision for numeric comparisons."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's programs are tiny: XLA's CPU compile, not their run, is most of a JAX test's
# time. Less LLVM optimisation compiles faster (measured on test_models + test_hard_setting:
# 131 -> 98 s) and computes the same operations; the runs of the suite's CLI drivers and their
# trials inherit it. A flag set by the caller wins.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tune reuses trial actors in the suite's runs: a fresh actor per trial (the default, so that
# the dashboard names each trial; tuner.service.stages.reuse_actors) costs a worker start per
# trial, ~11 s on a shared 2-core machine, which CI's many one-rate trials cannot afford.
# tests/test_dashboard.py runs the default.
os.environ.setdefault("TUNER_REUSE_ACTORS", "1")


# The suite runs in one process: the modules that run Ray (service, viewer, task smokes,
# Slurm, search, dashboard) must never run two experiments at once (on a 2-core machine they
# stall and kill each other's trials), and they share one tiny run (``tiny_reference``). The
# CLI runs that need no cluster of their own join one (``shared_ray``), one after another.


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
def shared_ray():
    """One local Ray cluster (2 CPUs) for the session's CLI runs (``tiny_run.cli(...,
    cluster=shared_ray)``): each run would otherwise start and stop a cluster of its own.
    Started by the first test that asks for it, stopped at the session's end."""
    from tiny_run import SharedCluster

    # TUNER_TEST_SHARED_RAY=0: each run starts a cluster of its own (as before it was shared)
    if os.environ.get("TUNER_TEST_SHARED_RAY", "1") == "0":
        yield None
        return
    cluster = SharedCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory, shared_ray):
    """``tests/fixtures/tiny.yaml`` run once through ``python -m tuner.run``, after its
    ``--pilot`` (so the run prints its times against the projection): (experiment folder, the
    two commands' output). Read by the service and viewer tests; tests that change a folder
    copy it first."""
    from tiny_run import cli, finish

    out = tmp_path_factory.mktemp("reference")
    pilot = finish(cli(out, "--pilot", cluster=shared_ray))
    return out / "tiny", pilot + finish(cli(out, cluster=shared_ray))


def pytest_collection_modifyitems(config, items):
    """The Slurm tests run last: the head their cluster starts runs cluster.yaml's
    ``ray stop`` first (as Ray's launcher configs do), which stops every Ray cluster of the
    user on the machine, the session's shared one (``shared_ray``) included: a test after them
    found its dashboard gone."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)  # stable
