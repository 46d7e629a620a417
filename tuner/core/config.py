"""Configuration of one training run: data x model x training x rollout evaluation.

Every field can be set from the command line with dot notation (tyro), e.g.
``python -m tuner.train --data.lambda_val 0.96 --model.patch_size 4 --train.steps 2000``.
Invalid combinations fail at construction, naming the field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math

from data.bigram import BigramConfig
from data.lds import LDSConfig
from data.modular import ModularConfig
from data.text import TextConfig
from models.config import ModelConfig

SCHEDULES = ("cosine", "constant")  # learning-rate shape after the linear warmup
# tuner.core.diagnostics.ESTIMATORS' names (that module checks it has exactly these; named here
# so building a config does not import the training core, which imports this module)
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
    optimizer: str = "adamw"  # tuner.core.optimizers: adamw | muon (Muon on matrices, Adam else)
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
    route_reg: str = "none"  # tuner.core.routing.REGULARIZERS: none | entropy | sparsity | gini
    route_reg_weight: float = 0.0  # its weight (>= 0)
    # tuner.core.diagnostics: estimators logged as diag/<key> every diagnostics_every steps
    diagnostics: tuple[str, ...] = ()  # names in tuner.core.diagnostics.ESTIMATORS
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
        from tuner.core.optimizers import OPTIMIZERS

        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r}; "
                             f"allowed: {sorted(OPTIMIZERS)}")
        self._check_routing_and_diagnostics()

    def _check_routing_and_diagnostics(self) -> None:
        from tuner.core.routing import REGULARIZERS

        if self.route_reg not in REGULARIZERS:
            raise ValueError(f"TrainConfig.route_reg={self.route_reg!r}; "
                             f"allowed: {list(REGULARIZERS)}")
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


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Autoregressive evaluation after training (SPEC section 3)."""

    warmup: int = 64  # observations read before generating
    horizons: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)  # scored steps ahead
    n_sequences: int = 8192  # parallel rollouts
    memory_budget_gb: float = 4.0  # per-chunk device-memory budget; chunks never change results
    seed: int = 12345  # key of the held-out rollout sequences

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.n_sequences < 1 or not self.horizons or min(self.horizons) < 1:
            raise ValueError("RolloutConfig: warmup, n_sequences and every horizon must be >= 1")

    @property
    def n_steps(self) -> int:
        return max(self.horizons)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run."""

    data: LDSConfig = LDSConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    rollout: RolloutConfig = RolloutConfig()
    bigram: BigramConfig = BigramConfig()  # task "bigram": the Markov chain
    modular: ModularConfig = ModularConfig()  # task "modular": (a op b) mod p
    text: TextConfig = TextConfig()  # task "text": the text file and tokenizer
    task: str = "lds"  # data.registry name: lds | bigram | modular | text (reads its section)
    out_dir: str = "runs/default"  # metrics.jsonl, checkpoints and summary.json land here
    rollout_after: bool = True  # run the rollout evaluation when training ends

    def __post_init__(self) -> None:
        from data.registry import TASKS

        if self.task not in TASKS:
            raise ValueError(f"RunConfig.task={self.task!r}; allowed: {sorted(TASKS)}")
        from models.config import GATED_BACKBONES

        if self.train.route_reg != "none" and self.model.backbone not in GATED_BACKBONES:
            raise ValueError(f"train.route_reg={self.train.route_reg!r} needs a gated backbone "
                             f"(model.backbone={self.model.backbone!r}); allowed: none, or "
                             f"model.backbone in {list(GATED_BACKBONES)}")
        for name in self.train.diagnostics:
            need = DIAGNOSTICS_NEED_TASK.get(name)
            if need and not hasattr(TASKS[self.task], need):
                raise ValueError(f"train.diagnostics: {name!r} needs a task with {need} (task "
                                 f"{self.task!r} has none); allowed: tasks "
                                 f"{[t for t, c in TASKS.items() if hasattr(c, need)]}")
        if self.task != "lds":  # the patch/rollout checks below concern the LDS only
            return
        p = self.model.patch_size
        if self.data.seq_len % p:
            raise ValueError(
                f"model.patch_size={p} must divide data.seq_len={self.data.seq_len}; allowed: "
                f"{[q for q in (1, 2, 4, 8, 16, 32) if self.data.seq_len % q == 0]}")
        if self.rollout.warmup % p or self.rollout.n_steps % p:
            raise ValueError(f"rollout.warmup={self.rollout.warmup} and max(rollout.horizons)="
                             f"{self.rollout.n_steps} must be multiples of model.patch_size={p}")


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
