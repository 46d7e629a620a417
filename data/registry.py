"""Task name -> task class: the only place a task is chosen.

A task class builds itself from the whole run config (``from_run_config``; duck-typed: data never
imports tuner) and declares what it reports, so the service needs no per-task code:

- ``METRICS``: every name its ``eval_metrics`` returns (the service validates ``asha.metric``
  against ``eval/<name>``);
- ``REPORTED``: the columns of the experiment report's finals table, headline first;
- ``MILESTONES``: ``(name, metric, threshold)`` triples: the first evaluated step at which
  ``metric >= threshold`` is reported as ``eval/<name>`` (the grokking step), NaN before;
- ``supports_rollout``: whether tuner.rollout can evaluate it autoregressively.
"""

from __future__ import annotations

from data.bigram import BigramTask
from data.lds_task import LDSTask
from data.modular import ModularTask
from data.text import TextTask

TASKS = {
    "lds": LDSTask,
    "bigram": BigramTask,
    "modular": ModularTask,
    "text": TextTask,
}


def metric_names(task: str) -> tuple[str, ...]:
    """Every metric a run of ``task`` reports at an evaluation (Tune's result keys)."""
    cls = TASKS[task]
    milestones = [name for name, _, _ in cls.MILESTONES]
    return ("train_loss", *(f"eval/{m}" for m in (*cls.METRICS, *milestones, "weight_norm")))
