"""Shared test settings: JAX on CPU, float32 matmuls at full precision for numeric comparisons."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


# Modules that start a Ray cluster (in-process or through the CLI) run one after another on one
# pytest-xdist worker (`-n 2 --dist loadgroup`, the README's command): two local clusters on a
# 2-core machine would compete for the same cores and ports; the other tests fill the other core.
RAY_MODULES = {"test_service", "test_task_experiments", "test_slurm", "test_search"}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))
