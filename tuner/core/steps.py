"""The training core: pure JAX, no Ray. State in, state out; jit lives at module level.

Tuned scalars (learning rate, weight decay, schedule lengths) are traced arguments in
:class:`HParams`, so every trial of a cell, and every trial a reused Ray worker runs, shares one
compiled step per shape. The data stream is a pure function of (seed, step), so a restored state
continues the exact same run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from models.sequence_model import SequenceModel
from tuner.core import optimizers, routing
from tuner.core.config import RunConfig, TrainConfig
from tuner.core.optimizer_base import Optimizer


class HParams(NamedTuple):
    """Traced training scalars (changing them never recompiles)."""

    lr: jax.Array
    weight_decay: jax.Array
    warmup_steps: jax.Array
    total_steps: jax.Array
    cosine: jax.Array  # 1.0: cosine decay after warmup; 0.0: constant (traced: no recompile)
    route_reg_weight: jax.Array | float = 0.0  # weight of the routing regularizer (gated models)

    @staticmethod
    def from_config(t: TrainConfig) -> HParams:
        f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return HParams(f(t.lr), f(t.weight_decay), f(max(1.0, t.warmup_frac * t.steps)),
                       f(t.steps), f(t.schedule == "cosine"), f(t.route_reg_weight))


class TrainState(NamedTuple):
    """Everything a resumed run needs: params, optimizer moments, step and the data key."""

    params: Any
    opt_state: Any
    step: jax.Array  # () int32, optimizer steps taken == batches consumed
    data_key: jax.Array  # raw uint32 PRNG key of the data stream


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """The static part of a step: what a change of recompiles."""

    model: SequenceModel
    batch_size: int
    b1: float
    b2: float
    clip_norm: float
    optimizer: str = "adamw"  # tuner.core.optimizers.OPTIMIZERS name
    grad_accum: int = 1  # micro-batches per step (the batch is split, gradients averaged)
    route_reg: str = "none"  # tuner.core.routing.REGULARIZERS name (gated models)

    @staticmethod
    def from_config(model: SequenceModel, t: TrainConfig) -> StepSpec:
        return StepSpec(model, t.batch_size, t.b1, t.b2, t.clip_norm, t.optimizer, t.grad_accum,
                        t.route_reg)

    def optimizer_impl(self) -> Optimizer:
        """The optimizer's (init, apply); lr and decay are passed to ``apply`` traced."""
        return optimizers.OPTIMIZERS[self.optimizer](self.b1, self.b2, self.clip_norm)


def build_model(cfg: RunConfig, task) -> SequenceModel:
    """The model for ``task``: ``task.io_dim`` is its observation size (or vocabulary)."""
    return SequenceModel(cfg.model, dim_y=task.io_dim)


def init_state(spec: StepSpec, task, seed: int) -> TrainState:
    """Fresh parameters and optimizer state; init and data keys both derive from ``seed``."""
    dummy = task.dummy_input()
    return _init_state(jax.random.PRNGKey(seed), spec=spec, input_shape=dummy.shape,
                       input_dtype=dummy.dtype.name)


@functools.partial(jax.jit, static_argnames=("spec", "input_shape", "input_dtype"))
def _init_state(seed_key: jax.Array, *, spec: StepSpec, input_shape: tuple[int, ...],
                input_dtype: str) -> TrainState:
    # jitted: op-by-op initialization costs seconds per trial on CPU
    init_key, data_key = jax.random.split(seed_key)
    params = spec.model.init(init_key, jnp.zeros(input_shape, input_dtype))
    return TrainState(params, spec.optimizer_impl().init(params), jnp.zeros((), jnp.int32),
                      data_key)


def lr_multiplier(step: jax.Array, hp: HParams) -> jax.Array:
    """Linear warmup to 1, then cosine decay to 0 at ``total_steps`` (or constant at 1)."""
    s = step.astype(jnp.float32) + 1.0
    warm = s / hp.warmup_steps
    frac = jnp.clip((s - hp.warmup_steps) / jnp.maximum(hp.total_steps - hp.warmup_steps, 1.0),
                    0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(math.pi * frac))
    return jnp.where(s < hp.warmup_steps, warm, 1.0 - hp.cosine * (1.0 - cosine))


def one_step(spec: StepSpec, task, hp: HParams, state: TrainState
              ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a fresh batch (a pure function of the state's data key and step):
    the body every scanned training loop repeats."""
    step_key = jax.random.fold_in(state.data_key, state.step)
    batch = task.sample(step_key, spec.batch_size)
    # dropout (where a model has it) draws from (data_key, step) too, so a resume is exact
    rngs = {"dropout": jax.random.fold_in(step_key, 1)}

    def loss_fn(params, b, rngs):
        if spec.route_reg != "none":  # static: the default path below is untouched
            return routing.regularized_loss(spec.model, task, params, b, rngs, spec.route_reg,
                                            hp.route_reg_weight)
        return task.loss(spec.model.apply(params, task.inputs(b), rngs=rngs), b)

    if spec.grad_accum == 1:
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rngs)
    else:
        loss, grads = _accumulated(loss_fn, state.params, batch, rngs, spec.grad_accum)
    scale = -hp.lr * lr_multiplier(state.step, hp)
    params, opt_state, grad_norm = spec.optimizer_impl().apply(
        grads, state.opt_state, state.params, scale, hp.weight_decay)
    metrics = {"loss": loss, "grad_norm": grad_norm}
    return TrainState(params, opt_state, state.step + 1, state.data_key), metrics


def _accumulated(loss_fn, params, batch, rngs, n_micro: int):
    """Loss and gradient of the whole batch from ``n_micro`` equal micro-batches, one at a time
    (``lax.scan``: activations of one micro-batch live at once). Every task's loss is a mean
    over the batch's examples, so the mean over equal micro-batches is the full batch's."""
    micro = jax.tree.map(lambda x: x.reshape(n_micro, x.shape[0] // n_micro, *x.shape[1:]),
                         batch)

    def add(carry, xs):
        i, b = xs
        keys = {name: jax.random.fold_in(key, i) for name, key in rngs.items()}
        loss, grads = jax.value_and_grad(loss_fn)(params, b, keys)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(add, zero, (jnp.arange(n_micro), micro))
    return loss / n_micro, jax.tree.map(lambda g: g / n_micro, grads)


def _train_steps(state: TrainState, task, hp: HParams, spec: StepSpec, n_steps: int
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    state, metrics = jax.lax.scan(lambda s, _: one_step(spec, task, hp, s), state, None,
                                  length=n_steps)
    return state, {k: v.mean() for k, v in metrics.items()} | {"last_loss": metrics["loss"][-1]}


@functools.partial(jax.jit, static_argnames=("spec", "n_steps"), donate_argnames=("state",))
def train_steps(state: TrainState, task, hp: HParams, *, spec: StepSpec, n_steps: int
                ) -> tuple[TrainState, dict[str, jax.Array]]:
    """``n_steps`` optimizer steps in one dispatch (lax.scan); returns the mean loss."""
    return _train_steps(state, task, hp, spec, n_steps)


@functools.partial(jax.jit, static_argnames=("spec", "n_steps"), donate_argnames=("states",))
def train_steps_seeds(states: TrainState, tasks, hp: HParams, *, spec: StepSpec, n_steps: int
                      ) -> tuple[TrainState, dict[str, jax.Array]]:
    """:func:`train_steps` for K seeds at once: ``states`` and ``tasks`` stacked on a leading
    axis (:func:`stack`), seed i training on task i (its own system), all in one vmapped program.

    One program trains every seed of a cell, so a small model fills more of the accelerator
    and the cell compiles once; each seed's trajectory equals its separate run.
    """
    return jax.vmap(lambda s, task: _train_steps(s, task, hp, spec, n_steps))(states, tasks)


@functools.partial(jax.jit, static_argnames=("spec", "n_steps"), donate_argnames=("states",))
def train_steps_members(states: TrainState, task, hps: HParams, *, spec: StepSpec, n_steps: int
                        ) -> tuple[TrainState, dict[str, jax.Array]]:
    """:func:`train_steps` for K trials of one cell at once: ``states`` and ``hps`` stacked on a
    leading axis (:func:`stack`), member i training with hyperparameters i on the shared task.

    A cell's search trials differ only in traced scalars (learning rate, ...), so K of them are
    one vmapped program: where one trial leaves the accelerator idle (large patches, small
    models) K cost little more than one. Each member's trajectory equals its separate run.
    """
    return jax.vmap(lambda s, hp: _train_steps(s, task, hp, spec, n_steps))(states, hps)


@functools.partial(jax.jit, static_argnames=("spec", "n_steps"), donate_argnames=("states",))
def train_steps_population(states: TrainState, tasks, hps: HParams, *, spec: StepSpec,
                           n_steps: int) -> tuple[TrainState, dict[str, jax.Array]]:
    """:func:`train_steps` for a population: member i trains with its own state, task and
    hyperparameters, all stacked on a leading axis, in one vmapped program.

    The search's populations hold learning rates of one cell or of several cells that compile
    to the same step (e.g. LDS cells that differ only in the system's eigenvalues), so both the
    task and the hyperparameters are per member; it generalises :func:`train_steps_seeds` and
    :func:`train_steps_members`.
    """
    return jax.vmap(lambda s, task, hp: _train_steps(s, task, hp, spec, n_steps))(
        states, tasks, hps)


def stack(trees: list) -> Any:
    """Pytrees of one structure stacked leaf by leaf on a new leading axis.

    Static (non-pytree) fields are taken from the first tree: tasks of one cell differ only in
    their arrays (e.g. each final seed's system), never in shapes.
    """
    treedef = jax.tree.structure(trees[0])
    leaves = [jax.tree.leaves(t) for t in trees]
    return jax.tree.unflatten(treedef, [jnp.stack(xs) for xs in zip(*leaves, strict=True)])


def unstack(tree: Any, i: int) -> Any:
    """Entry ``i`` of a tree stacked by :func:`stack` (or by vmap)."""
    return jax.tree.map(lambda x: x[i], tree)


def init_states(spec: StepSpec, task, seeds: list[int]) -> TrainState:
    """:func:`init_state` for several seeds, stacked on a leading axis."""
    return stack([init_state(spec, task, s) for s in seeds])


@functools.partial(jax.jit, static_argnames=("model", "batch"))
def eval_stats(params, task, key: jax.Array, *, model: SequenceModel, batch: int):
    """The task's evaluation statistics on ``batch`` held-out examples drawn from ``key``
    (for the LDS: the per-position squared error, (T,))."""
    b = task.eval_sample(key, batch)
    return task.eval_stats(model.apply(params, task.inputs(b)), b)


@functools.partial(jax.jit, static_argnames=("model", "batch"))
def route_metrics(params, task, key: jax.Array, *, model: SequenceModel, batch: int):
    """:func:`tuner.core.routing.metrics` on the held-out batch that :func:`eval_stats` scores."""
    return routing.metrics(model, params, task.inputs(task.eval_sample(key, batch)))


def evaluate(params, task, model: SequenceModel, batch: int, eval_seed: int
             ) -> tuple[dict[str, float], Any]:
    """Eval metrics on the held-out data of ``eval_seed`` (the same at every evaluation of a
    run), and the raw statistics they came from."""
    stats = eval_stats(params, task, jax.random.PRNGKey(eval_seed), model=model, batch=batch)
    metrics = {k: float(v) for k, v in task.eval_metrics(stats).items()}
    metrics["weight_norm"] = float(optax.tree.norm(params))  # what weight decay acts on
    if routing.is_routed(model):  # gate entropy and head usage on the same held-out data
        metrics |= {k: float(v) for k, v in route_metrics(
            params, task, jax.random.PRNGKey(eval_seed), model=model, batch=batch).items()}
    return metrics, jax.device_get(stats)
