"""Task name -> task class: the only place a task is chosen. Every class implements the
contract of :class:`data.task.Task` (what it computes and what it declares for the report)."""

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
