"""How many trials run at once: a fixed number from the experiment file, or ``auto``.

``auto`` fills the cluster: the cap is the number of trials its resources hold (GPUs /
``gpus_per_trial`` where trials take GPUs, else CPUs / ``cpus_per_trial``), read from Ray
every time the searcher is asked for a trial, so it grows as the autoscaler adds nodes. Each
cell's own concurrency stays at about a quarter of its trials (at least 1): TPE proposes from
finished trials, and a cell whose trials all start at once is a random search.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ClusterConcurrency:
    """Callable cap on running trials for ``max_concurrent: auto`` (picklable: Tune saves it
    with the searcher)."""

    cpus_per_trial: float
    gpus_per_trial: float

    def __call__(self) -> int:
        import ray

        have = ray.cluster_resources()
        if self.gpus_per_trial > 0:
            return max(1, math.floor(have.get("GPU", 0) / self.gpus_per_trial + 1e-9))
        return max(1, math.floor(have.get("CPU", 0) / self.cpus_per_trial + 1e-9))


def per_cell_cap(trials_per_cell: int) -> int:
    """Trials of one cell running at once under ``auto`` (module docstring)."""
    return max(1, trials_per_cell // 4)
