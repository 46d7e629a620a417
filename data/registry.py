"""Task name -> task class: the only place a task is chosen.

A task class builds itself from the whole run config (``from_run_config``; duck-typed: data never
imports tuner) and declares what it reports, so the service needs no per-task code:

- ``METRICS``: every name its ``eval_metrics`` returns (the service validates ``asha.metric``
  against ``eval/<name>``);
- ``REPORTED``: the columns of the experiment report's finals table, headline first;
- ``MILESTONES``: ``(name, metric, threshold)`` triples: the first evaluated step at which
  ``metric >= threshold`` is reported as ``eval/<name>`` (the grokking step), NaN before;
- ``supports_rollout``: whether data.lds_rollout can evaluate it autoregressively;
- ``HIGHER_IS_BETTER``: the metrics where larger is better (every other one: lower is better);
- ``SYSTEM_METRICS``: metrics that describe the task instance (e.g. the LDS's information cost
  of patching), the same for every model: the report shows them apart, never as a result;
- ``LEARNING_CHECK``: ``(metric, floor)`` or None: a cell whose finals do not clearly exceed
  ``floor`` on that metric (0 is the trivial predictor) is flagged as not learned, and no claim
  rests on it;
- ``SYSTEM_SEED``: the dotted config field that draws the task instance (LDS system, Markov
  chain, train split), or None; each final seed gets its own draw (``tuner.core.seeds``).
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


def metric_mode(task: str, metric: str) -> str:
    """"max" if larger values of ``metric`` (``eval/<name>`` or ``<name>``) are better, else
    "min"."""
    name = metric.removeprefix("eval/")
    return "max" if name in TASKS[task].HIGHER_IS_BETTER else "min"
