"""The experiment's progress as Ray application metrics, for a cluster's Prometheus and Grafana.

Ray Tune exports no metrics of its own, so a cluster's dashboards cannot show how far an
experiment is. These gauges are set from the same per-cell counts that ``status.json`` holds
(:class:`tuner.service.status.StatusFile`, in the driver); Ray's metrics agent of the driver's
node exports them in Prometheus text on the node's ``metrics_export_port``, named with Ray's
``ray_`` prefix: ``ray_lds_tuner_trials`` and ``ray_lds_tuner_best_value``. Gauges, not
counters: the counts are recomputed from Tune's whole trial list each time (so they are right
after a restore too, where a counter would count again).
"""

from __future__ import annotations

from typing import Any

TRIALS = "lds_tuner_trials"
BEST = "lds_tuner_best_value"
STATES = ("running", "finished", "errored")


class ServiceMetrics:
    """The gauges of one stage of one experiment (created in a process where Ray is up).

    Args:
        experiment: The experiment's name (its folder's name), a tag of every sample.
        stage: The stage's (Tune run's) name: ``search``, ``search_wider_low``, ``finals``...
        metric: The searched metric, the ``metric`` tag of the best value.
    """

    def __init__(self, experiment: str, stage: str, metric: str) -> None:
        from ray.util.metrics import Gauge

        self.tags = {"experiment": experiment, "stage": stage}
        self.metric = metric
        self.trials = Gauge(TRIALS, "Tune trials of an experiment's stage by cell and state "
                            "(running, finished, errored)",
                            tag_keys=("experiment", "stage", "cell", "state"))
        self.best = Gauge(BEST, "Best value so far of the searched metric per cell (among "
                          "the trials' latest reports; NaNs left out)",
                          tag_keys=("experiment", "stage", "cell", "metric"))

    def update(self, per_cell: dict[str, dict[str, Any]]) -> None:
        """Sets every gauge from ``status.json``'s ``cells`` (per cell: the state counts and
        ``best_so_far``); a cell with no finite value yet has no best-value sample."""
        for cell, entry in per_cell.items():
            for state in STATES:
                self.trials.set(int(entry.get(state, 0)),
                                tags={**self.tags, "cell": cell, "state": state})
            best = entry.get("best_so_far")
            if best is not None:
                self.best.set(float(best["value"]),
                              tags={**self.tags, "cell": cell, "metric": self.metric})
