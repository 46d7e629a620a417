"""Configuration of one training run: model x training x the tasks' sections.

Every field can be set from the command line with dot notation (tyro), e.g.
``python -m tuner.train --data.lambda_val 0.96 --model.patch_size 4 --train.steps 2000``.
Invalid combinations fail at construction, naming the field and the allowed values.

Why RunConfig is built, not written out: each task owns its sections (``CONFIG`` of its class,
e.g. the LDS's ``data`` and ``rollout``) and its checks across them (``check_config``), and
:mod:`data.registry` gathers them. ``RunConfig`` is made from that list with
``dataclasses.make_dataclass``, so adding a task adds its ``--<section>.*`` options and this
module never names a task or a task's section. It is a frozen dataclass registered under this
module's name, so tyro, ``dataclasses.asdict``/``replace``, equality and pickling (Ray ships
configs to trials) treat it as a written-out one.

Names of choices (the rule for all three): this module declares the names a config may choose,
``OPTIMIZERS``, ``ROUTE_REGULARIZERS`` and ``DIAGNOSTICS``, and each implementing module
(:mod:`tuner.core.optimizers`, :mod:`tuner.core.routing`, :mod:`tuner.core.diagnostics`) checks
at import that its table has exactly these names. So building a config imports no training-core
module, and those modules may import this one without an import circle
(``tests/test_imports.py`` checks that there is none).
"""

from __future__ import annotations

import dataclasses
import math

from data.registry import DEFAULT_TASK, SECTIONS, TASKS
from models.config import GATED_BACKBONES, ModelConfig

SCHEDULES = ("cosine", "constant")  # learning-rate shape after the linear warmup
# the names of tuner.core.optimizers.OPTIMIZERS, tuner.core.routing.REGULARIZERS and
# tuner.core.diagnostics.ESTIMATORS, in their order (each module checks it has exactly these)
OPTIMIZERS = ("adamw", "adamw_flat", "muon")
ROUTE_REGULARIZERS = ("none", "entropy", "sparsity", "gini")
DIAGNOSTICS = ("grad_norm", "hessian_trace", "fisher_trace", "input_jacobian_norm",
               "spectral_smoothness", "representation_norm", "weight_norms", "adam")
DIAGNOSTICS_NEED_TASK = {"spectral_smoothness": "residue_grid"}  # estimator -> task method


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization. ``lr``, ``weight_decay`` and the schedule lengths are traced at run time, so
    every trial of a cell reuses one compiled step."""

    steps: int = 2000  # optimizer steps (the budget)
    batch_size: int = 64  # sequences per step (the effective batch)
    grad_accum: int = 1  # micro-batches of batch_size / grad_accum each, gradients averaged
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # decoupled decay on matrices only (not embeddings, biases, norms)
    optimizer: str = "adamw"  # OPTIMIZERS: adamw | adamw_flat | muon (Muon on matrices, Adam else)
    warmup_frac: float = 0.05  # linear warmup as a fraction of ``steps``
    schedule: str = "cosine"  # after warmup: cosine (to 0 at ``steps``) | constant (grokking)
    b1: float = 0.9  # Adam beta1
    b2: float = 0.95  # Adam beta2
    clip_norm: float = 1.0  # global gradient-norm clip
    eval_every: int = 200  # steps between evaluations (and the unit ASHA counts in)
    eval_batch: int = 512  # held-out sequences per evaluation (fixed key: same every time)
    eval_seed: int = 2**31 - 1  # key of the held-out data (finals use another: tuner.core.seeds)
    seed: int = 0  # init and data-stream seed (the system is data.system_seed)
    # gated models (model.backbone routed): loss + route_reg_weight * regularizer (traced)
    route_reg: str = "none"  # ROUTE_REGULARIZERS: none | entropy | sparsity | gini
    route_reg_weight: float = 0.0  # its weight (>= 0)
    # tuner.core.diagnostics: estimators logged as diag/<key> every diagnostics_every steps
    diagnostics: tuple[str, ...] = ()  # names in DIAGNOSTICS
    diagnostics_every: int = 0  # steps between them, a multiple of eval_every; 0: off
    diagnostics_probes: int = 8  # random probes of the Hutchinson and Jacobian estimators

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch", "grad_accum",
                     "diagnostics_probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig.grad_accum={self.grad_accum} must divide "
                             f"batch_size={self.batch_size}; allowed: its divisors")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr} must be > 0")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"TrainConfig.warmup_frac={self.warmup_frac} must be in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}; allowed: {list(SCHEDULES)}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay} must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r}; "
                             f"allowed: {sorted(OPTIMIZERS)}")
        self._check_routing_and_diagnostics()

    def _check_routing_and_diagnostics(self) -> None:
        if self.route_reg not in ROUTE_REGULARIZERS:
            raise ValueError(f"TrainConfig.route_reg={self.route_reg!r}; "
                             f"allowed: {list(ROUTE_REGULARIZERS)}")
        if not (self.route_reg_weight >= 0 and math.isfinite(self.route_reg_weight)):
            raise ValueError(f"TrainConfig.route_reg_weight={self.route_reg_weight}; "
                             "allowed: a finite number >= 0")
        for name in self.diagnostics:
            if name not in DIAGNOSTICS:
                raise ValueError(f"TrainConfig.diagnostics: {name!r} is not a diagnostic; "
                                 f"allowed: {list(DIAGNOSTICS)}")
        if len(set(self.diagnostics)) < len(self.diagnostics):
            raise ValueError(f"TrainConfig.diagnostics={list(self.diagnostics)} names one twice;"
                             " allowed: distinct names")
        if self.diagnostics_every < 0 or self.diagnostics_every % self.eval_every:
            raise ValueError(f"TrainConfig.diagnostics_every={self.diagnostics_every}; allowed: "
                             f"0 (off) or a multiple of eval_every={self.eval_every}")
        if self.diagnostics_every and not self.diagnostics:
            raise ValueError(f"TrainConfig.diagnostics_every={self.diagnostics_every} with no "
                             "diagnostics; allowed: 0, or names in train.diagnostics")

    def diagnostics_due(self, step: int) -> bool:
        """Whether the evaluation at ``step`` also computes the diagnostics (every
        ``diagnostics_every`` steps and at the last one)."""
        return bool(self.diagnostics_every and self.diagnostics) and (
            step % self.diagnostics_every == 0 or step == self.steps)


def _check_run(cfg) -> None:
    """RunConfig's checks across sections; the task's own ones are its ``check_config``."""
    if cfg.task not in TASKS:
        raise ValueError(f"RunConfig.task={cfg.task!r}; allowed: {sorted(TASKS)}")
    if cfg.train.route_reg != "none" and cfg.model.backbone not in GATED_BACKBONES:
        raise ValueError(f"train.route_reg={cfg.train.route_reg!r} needs a gated backbone "
                         f"(model.backbone={cfg.model.backbone!r}); allowed: none, or "
                         f"model.backbone in {list(GATED_BACKBONES)}")
    for name in cfg.train.diagnostics:
        need = DIAGNOSTICS_NEED_TASK.get(name)
        if need and not hasattr(TASKS[cfg.task], need):
            raise ValueError(f"train.diagnostics: {name!r} needs a task with {need} (task "
                             f"{cfg.task!r} has none); allowed: tasks "
                             f"{[t for t, c in TASKS.items() if hasattr(c, need)]}")
    TASKS[cfg.task].check_config(cfg)


def _summary(cls: type) -> str:
    """The first paragraph of a section class's docstring, on one line: its ``--help`` text."""
    return " ".join((cls.__doc__ or cls.__name__).strip().split("\n\n")[0].split())


def _build_run_config() -> type:
    """RunConfig: model, train, the registry's sections in its order, then the run's own
    fields. Field docs go in the docstring's Attributes, which tyro shows as ``--help``."""
    core = [("model", ModelConfig, ModelConfig()), ("train", TrainConfig, TrainConfig())]
    own = [("task", str, DEFAULT_TASK, f"data.registry name: {' | '.join(TASKS)} (reads its "
                                       "sections)"),
           ("out_dir", str, "runs/default",
            "metrics.jsonl, checkpoints and summary.json land here"),
           ("rollout_after", bool, True, "run the task's evaluation after training "
                                         "(data.task.Task.after_training) when training ends")]
    taken = {name for name, *_ in core} | {name for name, *_ in own}
    if clash := sorted(taken & set(SECTIONS)):
        raise ValueError(f"task section(s) {clash} shadow RunConfig's own fields; allowed: "
                         f"names other than {sorted(taken)}")
    sections = [(name, cls, cls()) for name, (_, cls) in SECTIONS.items()]
    docs = [f"{name}: task {task!r}: {_summary(cls)}" for name, (task, cls) in SECTIONS.items()]
    docs += [f"{name}: {doc}" for name, _, _, doc in own]
    doc = ("One training run: the model, its training, every task's sections (the run's task "
           "reads its own) and where it writes.\n\nAttributes:\n"
           + "".join(f"    {line}\n" for line in docs))
    fields = [(name, typ, dataclasses.field(default=default))
              for name, typ, default, *_ in (*core, *sections, *own)]
    return dataclasses.make_dataclass(
        "RunConfig", fields, frozen=True, module=__name__,
        namespace={"__doc__": doc, "__post_init__": _check_run})


RunConfig = _build_run_config()


def replace(cfg, **dotted) -> RunConfig:
    """``replace(cfg, **{"train.lr": 1e-3, "data.lambda_val": 0.9})``: nested dataclass update."""
    groups: dict[str, dict] = {}
    top: dict = {}
    for key, value in dotted.items():
        head, _, rest = key.partition(".")
        if rest:
            groups.setdefault(head, {})[rest] = value
        else:
            top[key] = value
    for head, fields in groups.items():
        sub = getattr(cfg, head)
        valid = {f.name for f in dataclasses.fields(sub)}
        unknown = set(fields) - valid
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(f'{head}.{u}' for u in unknown)}; "
                             f"allowed in {head}: {sorted(valid)}")
        top[head] = dataclasses.replace(sub, **fields)
    return dataclasses.replace(cfg, **top)
