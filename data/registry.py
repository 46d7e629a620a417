"""Task name -> task class: the only place a task is chosen. Every class implements the
contract of :class:`data.task.Task` (what it computes and what it declares for the report).

It also gathers the tasks' RunConfig sections (``SECTIONS``), from which ``tuner.core.config``
builds the RunConfig, and names the default task, so the training core never names a task.
"""

from __future__ import annotations

from collections.abc import Mapping

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
DEFAULT_TASK = "lds"  # RunConfig.task when none is given


def gather_sections(tasks: Mapping[str, type]) -> dict[str, tuple[str, type]]:
    """Section name -> (owning task, section dataclass), tasks in registry order, each task's
    sections in its ``CONFIG`` order. Two tasks naming one section would make ``--<name>.*``
    ambiguous, so a clash raises ValueError."""
    out: dict[str, tuple[str, type]] = {}
    for task, cls in tasks.items():
        for name, section in cls.CONFIG.items():
            if name in out:
                raise ValueError(f"RunConfig section {name!r} of task {task!r} is already task "
                                 f"{out[name][0]!r}'s; allowed: a name no other task uses")
            out[name] = (task, section)
    return out


SECTIONS = gather_sections(TASKS)


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
