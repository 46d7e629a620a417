"""The task contract: what every task of the registry (``data.registry.TASKS``) implements.

A task is a ``flax.struct.dataclass`` (its arrays are a pytree, so jitted steps take it as an
argument and the finals can stack one per seed) whose class also declares what it reports, so
the training core and the service need no per-task code. ``tests/test_task_contract.py`` runs
the same checks over every registered task.

A task also owns its part of the RunConfig: ``CONFIG`` names its sections (``--data.*`` and
``--rollout.*`` for the LDS), which :mod:`data.registry` gathers and ``tuner.core.config`` turns
into RunConfig fields, and ``check_config`` checks them against the rest of the run (e.g. the
model's patch size). Methods that need the run's settings get the whole RunConfig and read their
own sections, so no caller names a task's section.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import jax


class NothingAfterTraining:
    """For tasks whose evaluation ends with the last ``eval_metrics``: no curves, nothing more."""

    CURVE = None

    @staticmethod
    def after_training(params, model, cfg) -> dict[str, float]:
        """Nothing: ``cfg`` (the RunConfig) is unused."""
        del params, model, cfg
        return {}

    @staticmethod
    def after_training_plan(model, cfg) -> str:
        del model, cfg
        return ""


@runtime_checkable
class Task(Protocol):
    # every name eval_metrics returns; the service checks asha.metric / claims against them
    METRICS: ClassVar[tuple[str, ...]]
    REPORTED: ClassVar[tuple[str, ...]]  # the report's finals columns, headline first
    HIGHER_IS_BETTER: ClassVar[tuple[str, ...]]  # metrics where larger is better (others: lower)
    # metrics of the task instance, the same for every model (e.g. the LDS's information cost
    # of patching): shown apart in the report, never judged as results
    SYSTEM_METRICS: ClassVar[tuple[str, ...]]
    # (metric, floor) or None: a cell whose finals do not clearly exceed the floor (0 = the
    # trivial predictor) is flagged as not learned and no claim rests on it
    LEARNING_CHECK: ClassVar[tuple[str, float] | None]
    # dotted RunConfig field that draws the instance (LDS system, chain, split) or None; each
    # final seed gets its own draw (tuner.core.seeds)
    SYSTEM_SEED: ClassVar[str | None]
    # (name, metric, threshold): first step with metric >= threshold, reported as eval/<name>
    MILESTONES: ClassVar[tuple[tuple[str, str, float], ...]]
    # curves the report draws from after_training's metrics (prefix + x value), or None
    CURVE: ClassVar[dict[str, Any] | None]
    # RunConfig section name -> its frozen dataclass (the default instance is the section's
    # default); names are unique across tasks (data.registry checks) and never a core field's
    CONFIG: ClassVar[dict[str, type]]

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raises ValueError (naming the dotted fields and what is allowed) when the RunConfig
        ``cfg`` of this task combines its sections with the rest wrongly; called at its
        construction, so a bad combination fails before any training."""

    @classmethod
    def from_run_config(cls, cfg) -> Task:
        """Builds the task from the whole RunConfig (it reads its own section)."""

    @property
    def io_dim(self) -> int:
        """Features (or vocabulary) per position the model reads and predicts."""

    def dummy_input(self) -> jax.Array:
        """A model input of the right shape and dtype, for init."""

    def sample(self, key: jax.Array, batch: int) -> Any:
        """A training batch (pure function of the key)."""

    def eval_sample(self, key: jax.Array, batch: int) -> Any:
        """A held-out batch (pure function of the key)."""

    def inputs(self, batch: Any) -> jax.Array:
        """What the model reads from a batch."""

    def loss(self, outputs: jax.Array, batch: Any) -> jax.Array:
        """The scalar training loss (float32)."""

    def eval_stats(self, outputs: jax.Array, batch: Any) -> Any:
        """Evaluation statistics of one held-out batch (jitted)."""

    def eval_metrics(self, stats: Any) -> dict[str, jax.Array]:
        """``METRICS`` from the statistics."""

    def zero_predictor_metrics(self) -> dict[str, float]:
        """What the task's trivial predictor scores: the bar a learning claim must clear."""

    def after_training(self, params, model, cfg) -> dict[str, float]:
        """Evaluation after training (the LDS rollouts; {} for most tasks); ``cfg`` is the
        RunConfig, of which the task reads its own sections."""

    def after_training_plan(self, model, cfg) -> str:
        """One line on what :meth:`after_training` will do (e.g. memory, chunks), or "";
        ``cfg`` is the RunConfig."""
