"""Shared test settings: JAX on CPU, float32 matmuls at full precision for numeric comparisons."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


# Modules that start a Ray cluster (in-process or through the CLI) run one after another on one
# pytest-xdist worker (`-n 2 --dist loadgroup`, the README's command): two local clusters on a
# 2-core machine would compete for the same cores and ports; the other tests fill the other core.
RAY_MODULES = {"test_service", "test_task_experiments", "test_slurm", "test_search",
               "test_view"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))


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
