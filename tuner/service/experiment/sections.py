"""The experiment file's sections, one frozen dataclass each, every one checking itself.

A section is built in code (tests, benches) or from its YAML body by ``parse``; either way its
``__post_init__`` checks the relations between its fields, so no unchecked section exists.
A check that fails raises :class:`FieldError` naming the field; the loader
(:mod:`tuner.service.experiment.load`) turns it into ``<file>:<line>: <section>.<field>: ...``.
What is derived from a section lives on it (the :class:`Asha` section's ``objective``), so no
caller rebuilds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from data.registry import metric_mode
from tuner.core.seeds import SEARCH_SEED
from tuner.service.experiment.values import Invalid, as_bool, as_int, as_number, as_str
from tuner.service.objective import MODES, Objective
from tuner.service.search.pick import PICKS

# Training seeds from SEARCH_SEED up are reserved for the learning-rate search
# (tuner.core.seeds), so finals.seeds must lie in [0, SEARCH_SEED).
SEEDS_ALLOWED = (f"a list of at least 2 distinct integers in [0, {SEARCH_SEED - 1}] (seeds >= "
                 f"{SEARCH_SEED} are reserved for the learning-rate search, which must not train "
                 "with a seed of the finals)")
_WANDB_BAD = set("/\\#?%:")


class FieldError(ValueError):
    """A section's field is invalid: ``field`` names it, ``item`` the list item if any."""

    def __init__(self, field: str, message: str, item: int | None = None):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.item = field, message, item


def _read(body: dict, key: str, fn: Callable[[Any, str], Any], allowed: str,
          default: Any = ...) -> Any:
    """``body[key]`` through the type check ``fn``, or ``default`` when absent."""
    if key not in body:
        if default is ...:
            raise FieldError(key, f"is missing; allowed: {allowed}")
        return default
    try:
        return fn(body[key], allowed)
    except Invalid as e:
        raise FieldError(key, str(e)) from None


def _count(value: Any, allowed: str) -> int:
    n = as_int(value, allowed)
    if n < 1:
        raise Invalid(f"{value!r} is not allowed; allowed: {allowed}")
    return n


def _positive(value: Any, allowed: str) -> float:
    x = as_number(value, allowed)
    if not x > 0:
        raise Invalid(f"{value!r} is not allowed; allowed: {allowed}")
    return float(x)


@dataclasses.dataclass(frozen=True)
class Search:
    """``search:``: the learning-rate range and how many rates each cell tries, and how."""

    lr_low: float
    lr_high: float
    trials_per_cell: int
    max_concurrent: int | None = 2  # trials at once over all cells; None: "auto" (the cluster)
    population: int = 1  # a cell's rates trained together in one trial (1: one per trial)
    share_program: bool = False  # population: cells of one compiled program share a trial
    # population: a cell's rate is fitted to every member's values ("fit",
    # tuner.service.search.pick) or the best full-budget member ("survivor", before issue 33)
    pick: str = "fit"

    def __post_init__(self) -> None:
        if not self.lr_low > 0:
            raise FieldError("lr_low", f"{self.lr_low!r} is not allowed; allowed: a finite "
                             "number > 0 (e.g. 1.0e-4)")
        if not self.lr_high > self.lr_low:
            raise FieldError("lr_high", f"{self.lr_high:g} is not allowed; allowed: a finite "
                             f"number > lr_low={self.lr_low:g}")
        if self.trials_per_cell < 1:
            raise FieldError("trials_per_cell", f"{self.trials_per_cell} is not allowed; "
                             "allowed: an integer >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise FieldError("max_concurrent", f"{self.max_concurrent} is not allowed; "
                             "allowed: an integer >= 1 or auto")
        if not 1 <= self.population <= self.trials_per_cell:
            raise FieldError("population", f"{self.population} is not allowed; allowed: an "
                             f"integer in 1..trials_per_cell={self.trials_per_cell}")
        if self.share_program and self.population == 1:
            raise FieldError("share_program", "true needs a population; allowed: false, or "
                             "true with search.population >= 2")
        if self.pick not in PICKS:
            raise FieldError("pick", f"{self.pick!r} is not allowed; allowed: {' or '.join(PICKS)}")

    @property
    def auto_concurrency(self) -> bool:
        """Whether the number of trials at once follows the cluster's free resources."""
        return self.max_concurrent is None

    @classmethod
    def parse(cls, body: dict) -> Search:
        lr_low = _read(body, "lr_low", _positive, "a finite number > 0 (e.g. 1.0e-4)")
        return cls(
            lr_low=lr_low,
            lr_high=float(_read(body, "lr_high", as_number,
                                f"a finite number > lr_low={lr_low:g}")),
            trials_per_cell=_read(body, "trials_per_cell", _count, "an integer >= 1"),
            # "auto": as many trials as the cluster's resources hold (tuner.service.concurrency)
            max_concurrent=_read(body, "max_concurrent",
                                 lambda v, a: None if v == "auto" else _count(v, a),
                                 "an integer >= 1 or auto", default=2),
            population=_read(body, "population", _count, "an integer >= 1", default=1),
            share_program=_read(body, "share_program", as_bool, "true or false", default=False),
            pick=_read(body, "pick", as_str, " or ".join(PICKS), default="fit"))


@dataclasses.dataclass(frozen=True)
class Asha:
    """``asha:``: the metric every stage ranks by, and early stopping inside a cell (a
    population halves at the same rungs)."""

    metric: str
    mode: str
    grace_period: int  # steps before a rate may be stopped
    reduction_factor: float
    max_t: int  # the budget (train.steps), where the last rung is

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FieldError("mode", f"{self.mode!r} is not allowed; allowed: {list(MODES)}")
        if not 1 <= self.grace_period <= self.max_t:
            raise FieldError("grace_period", f"{self.grace_period} is not allowed; allowed: an "
                             f"integer in 1..train.steps={self.max_t}")
        if not self.reduction_factor > 1:
            raise FieldError("reduction_factor", f"{self.reduction_factor:g} is not allowed; "
                             "allowed: a finite number > 1")

    @property
    def objective(self) -> Objective:
        return Objective(self.metric, self.mode)

    @classmethod
    def parse(cls, body: dict, task: str, metrics: tuple[str, ...], max_t: int) -> Asha:
        """``metrics``: what ``task`` and every cell's model report; the task says which way
        each is better."""
        metric = _read(body, "metric", as_str, list(metrics))
        if metric not in metrics:
            raise FieldError("metric", f"{metric!r} is not a metric of task {task!r}; allowed: "
                             f"{list(metrics)}")
        mode = _read(body, "mode", as_str, list(MODES))
        if mode not in MODES:
            raise FieldError("mode", f"{mode!r} is not allowed; allowed: {list(MODES)}")
        better = metric_mode(task, metric)
        if mode != better:
            raise FieldError("mode", f"{mode!r} with metric {metric} (where "
                             f"{'higher' if better == 'max' else 'lower'} is better); "
                             f"allowed: {better!r}")
        return cls(metric=metric, mode=mode,
                   grace_period=_read(body, "grace_period", as_int,
                                      f"an integer in 1..train.steps={max_t}"),
                   reduction_factor=float(_read(body, "reduction_factor", as_number,
                                                "a finite number > 1")),
                   max_t=max_t)


@dataclasses.dataclass(frozen=True)
class Finals:
    """``finals:``: the seeds every cell's best rate is retrained with."""

    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.seeds) < 2:
            raise FieldError("seeds", f"{list(self.seeds)!r} is not allowed; allowed: "
                             f"{SEEDS_ALLOWED}")
        for i, s in enumerate(self.seeds):
            if not 0 <= s < SEARCH_SEED:
                raise FieldError("seeds", f"item {i}: {s} is out of range; allowed: "
                                 f"{SEEDS_ALLOWED}", item=i)
            if s in self.seeds[:i]:
                raise FieldError("seeds", f"item {i}: {s} is given twice; allowed: "
                                 f"{SEEDS_ALLOWED}", item=i)

    @classmethod
    def parse(cls, body: dict) -> Finals:
        if "seeds" not in body:
            raise FieldError("seeds", f"is missing; allowed: {SEEDS_ALLOWED}")
        seeds = body["seeds"]
        if not isinstance(seeds, list) or len(seeds) < 2:
            raise FieldError("seeds", f"{seeds!r} is not allowed; allowed: {SEEDS_ALLOWED}")
        for i, s in enumerate(seeds):
            try:
                as_int(s, SEEDS_ALLOWED)
            except Invalid as e:
                raise FieldError("seeds", f"item {i}: {e}", item=i) from None
        return cls(tuple(seeds))


GPUS_ALLOWED = ("auto (the service sizes each stage's programs and shares to the cards: "
                "tuner/service/plan), or a number >= 0: a fraction <= 1 (trials share a GPU) or a "
                "whole number of GPUs, taken by every trial as given")
GPU_MEMORY_ALLOWED = "a number > 0: one card's memory in GiB (e.g. 80 for an H100)"


@dataclasses.dataclass(frozen=True)
class Resources:
    """``resources:``: what one trial reserves on the cluster.

    ``gpus_per_trial: auto`` (``planned``) lets the stage plan (:mod:`tuner.service.plan`) size
    the programs to the card and pick each stage's share; ``gpus_per_trial`` then holds 1, the
    most a trial takes. A number is an override: every trial takes exactly that share and the
    programs are cut to fit it. ``gpu_memory_gib`` names the card's memory where the driver
    cannot ask it (no pilot has run and no GPU answers a probe, e.g. logical GPUs).
    """

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    planned: bool = False
    gpu_memory_gib: float | None = None

    def __post_init__(self) -> None:
        if not self.cpus_per_trial > 0:
            raise FieldError("cpus_per_trial", f"{self.cpus_per_trial!r} is not allowed; "
                             "allowed: a finite number > 0 (CPUs per trial, e.g. 1 or 0.5)")
        if not self.gpus_per_trial >= 0 or (self.gpus_per_trial > 1
                                            and not float(self.gpus_per_trial).is_integer()):
            raise FieldError("gpus_per_trial", f"{self.gpus_per_trial:g} is not allowed; "
                             f"allowed: {GPUS_ALLOWED}")
        if self.gpu_memory_gib is not None and not self.gpu_memory_gib > 0:
            raise FieldError("gpu_memory_gib", f"{self.gpu_memory_gib!r} is not allowed; "
                             f"allowed: {GPU_MEMORY_ALLOWED}")

    @property
    def ray(self) -> dict[str, float]:
        """Ray's resource request of one trial."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    @classmethod
    def parse(cls, body: dict) -> Resources:
        planned = body.get("gpus_per_trial") == "auto"
        return cls(
            cpus_per_trial=_read(body, "cpus_per_trial", _positive, "a finite number > 0 (CPUs "
                                 "per trial, e.g. 1 or 0.5)", default=1.0),
            gpus_per_trial=1.0 if planned else float(
                _read(body, "gpus_per_trial", as_number, GPUS_ALLOWED, default=0.0)),
            planned=planned,
            gpu_memory_gib=_read(body, "gpu_memory_gib", _positive, GPU_MEMORY_ALLOWED,
                                 default=None))


@dataclasses.dataclass(frozen=True)
class Wandb:
    """``wandb:``: where the runs are logged."""

    project: str = "lds-tuner"

    def __post_init__(self) -> None:
        if (not self.project.strip() or len(self.project) > 128
                or _WANDB_BAD & set(self.project)):
            raise FieldError("project", f"{self.project!r} is not a W&B project name; allowed: "
                             "1-128 characters, none of / \\ # ? % :")

    @classmethod
    def parse(cls, body: dict) -> Wandb:
        return cls(_read(body, "project", as_str, "a W&B project name", default="lds-tuner"))


# section name -> its class (the loader's registry; each class's fields are the section's keys)
SECTIONS: dict[str, type] = {"search": Search, "asha": Asha, "finals": Finals,
                             "resources": Resources, "wandb": Wandb}


def keys(section: str) -> set[str]:
    """The fields an experiment file may write under ``section`` (``asha.max_t`` is derived
    from ``train.steps``)."""
    return {f.name for f in dataclasses.fields(SECTIONS[section])} - {"max_t", "planned"}
