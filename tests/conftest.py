"""Shared test settings: JAX on CPU, float32 matmuls at full precision for numeric comparisons."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


# The modules that share the session's tiny run (``tiny_reference``) run on one pytest-xdist
# worker (`-n 2 --dist loadgroup`, the README's command), so it is made once; every other test,
# the other Ray-cluster modules included, goes to whichever worker is free.
TINY_RUN_MODULES = {"test_service", "test_view"}


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the mark into the node id
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in TINY_RUN_MODULES:
            item.add_marker(pytest.mark.xdist_group("tiny_run"))


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
