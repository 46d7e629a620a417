"""``max_concurrent: auto``: the cap on running trials is what the cluster's resources hold,
read from a real local Ray cluster (with logical GPUs, so the GPU rule runs on a CPU machine),
and each cell keeps about a quarter of its trials running."""

from __future__ import annotations

import pickle

import pytest

from tuner.service.concurrency import ClusterConcurrency, per_cell_cap


@pytest.mark.parametrize("trials,cap", [(1, 1), (3, 1), (4, 1), (8, 2), (12, 3), (30, 7)])
def test_a_cell_runs_about_a_quarter_of_its_trials_at_once(trials, cap):
    assert per_cell_cap(trials) == cap


def test_the_cap_is_what_the_cluster_holds():
    import ray

    ray.init(address="local", num_cpus=3, num_gpus=2, include_dashboard=False)
    try:
        assert ClusterConcurrency(1.0, 0.5)() == 4  # GPUs bound when trials take them
        assert ClusterConcurrency(1.0, 0.3)() == 6  # floor(2 / 0.3)
        assert ClusterConcurrency(1.0, 0.25)() == 8  # exact ratios are not lost to rounding
        assert ClusterConcurrency(0.5, 0.0)() == 6  # else CPUs
        assert ClusterConcurrency(4.0, 0.0)() == 1  # never 0: one trial always runs
        # Tune pickles the searcher with its cap: the copy still reads the live cluster
        assert pickle.loads(pickle.dumps(ClusterConcurrency(1.0, 1.0)))() == 2
    finally:
        ray.shutdown()
