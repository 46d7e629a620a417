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


# The modules that start a Ray cluster (service, viewer, task smokes, Slurm, search) carry
# ``pytest.mark.xdist_group("ray")``: with `-n 2 --dist loadgroup` (the README's command) they
# run one after another on one worker (two local clusters at once stalled and killed each
# other's trials on a 2-core machine), sharing one tiny run; the other worker takes the rest.


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
