"""Optimizer-dynamics and curvature diagnostics: name -> estimator, pure and jitted.

They cost several forward/backward passes each, so the loop computes them only every
``train.diagnostics_every`` steps (and at the last step), for the names in ``train.diagnostics``,
and reports them as ``diag/<key>`` beside the evaluation's metrics (Tune, W&B, metrics.jsonl).

All are measured on the training batch of the next step (``task.sample`` at the state's step:
the whole train set for the grokking task), on the task loss without routing regularizer and
without dropout. ``n = train.diagnostics_probes`` random probes where an estimator needs them;
the probes' key derives from (data key, step), so a resumed run measures the same. Fisher,
Jacobian and representation use the first ``SUBSAMPLE`` examples of the batch.

Keys each estimator reports (``tests/test_diagnostics.py`` checks each against an exact
computation on a tiny model):

- ``grad_norm``: ||grad L|| (global L2 norm, before clipping).
- ``hessian_trace``: tr(d^2 L / d w^2), Hutchinson (1990): mean of v^T H v over n Rademacher
  probes v (E[v v^T] = I), each H v a forward-over-reverse product (jvp of grad), no Hessian.
- ``fisher_trace``: trace of the empirical Fisher (1/N) sum_i g_i g_i^T = (1/N) sum_i ||g_i||^2,
  g_i the gradient of example i's loss (vmapped per-example gradients).
- ``input_jacobian_norm``: sqrt((1/N) sum_i ||J_i||_F^2), J_i = d outputs_i / d h_i the Jacobian
  of example i's model outputs (every position, every output unit) with respect to its input
  representation h_i (the input layer's output; RevIN statistics of the LDS model held fixed),
  estimated by random projections: E||J^T v||^2 = ||J||_F^2 for v ~ N(0, I), n probes, each one
  vector-Jacobian product. Examples do not interact, so J is block-diagonal over examples.
- ``spectral_smoothness`` (tasks with ``residue_grid``, the modular task): the answer logits
  f(a, b) over all p^2 residue pairs, 2-D DFT over (a, b), power P(k1, k2) summed over the
  logits; the share of the non-constant power (k != (0, 0)) at low frequencies, folded
  frequencies min(k, p - k) both <= p // 4. About 1/4 for an unstructured function, 1 for a
  smooth one; 1 for a constant one (no non-constant power).
- ``representation_norm``: sqrt(mean over examples and positions of ||h||^2), h the backbone's
  output (the last hidden representation, before the head).
- ``weight_norm/<module>``: L2 norm of each module's parameters (e.g. ``backbone/routed_0``).
- ``adam_sqrt_v``, ``adam_snr``: means over every Adam-updated entry of the bias-corrected
  sqrt(v) and of |m| / (sqrt(v) + eps) (the update's signal-to-noise); ``adam_eff_lr``:
  lr_t / (adam_sqrt_v + eps), the step per unit gradient at the typical second moment (a mean
  of lr_t / (sqrt(v) + eps) would be lr_t / eps from never-updated entries);
  ``update_decay_ratio``: ||u|| / ||wd * p|| over the decayed leaves, u the optimizer's next
  update direction (the trainer steps p <- p - lr_t (u + wd p)), NaN when wd = 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from models.sequence_model import SequenceModel
from tuner.core import config
from tuner.core.optimizer_base import Optimizer, decay_mask
from tuner.core.steps import lr_multiplier

SUBSAMPLE = 128  # examples for the per-example estimators (cost grows with it, not accuracy)
ADAM_EPS = 1e-8  # optax.scale_by_adam's default, which tuner.core.optimizers uses


# ---- primitives (pure; the estimators below and the exactness tests use them) ---------------

def tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                               strict=True))


def rademacher_probes(params, key: jax.Array, n: int):
    """n probe trees shaped like ``params`` (leading axis n), entries +-1 with equal odds."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        jax.random.rademacher(k, (n, *x.shape), jnp.float32).astype(x.dtype)
        for k, x in zip(keys, leaves, strict=True)])


def hessian_quadratic_forms(loss: Callable, params, probes) -> jax.Array:
    """v^T H v for every probe v (leading axis of ``probes``), H the Hessian of ``loss`` at
    ``params``; H v = jvp of the gradient (forward-over-reverse)."""
    grad = jax.grad(loss)

    def one(v):
        return tree_vdot(v, jax.jvp(grad, (params,), (v,))[1])

    return jax.vmap(one)(probes)


def per_example_grad_sq_norms(example_loss: Callable, params, examples) -> jax.Array:
    """||grad example_loss(params, e)||^2 for each example e (leading axis of ``examples``)."""
    def one(e):
        return optax.tree.norm(jax.grad(example_loss)(params, e), squared=True)

    return jax.vmap(one)(examples)


def vjp_sq_norms(fn: Callable, x: jax.Array, probes: jax.Array) -> jax.Array:
    """||J^T v||^2 for each probe v (leading axis of ``probes``, shaped like fn(x)), J = dfn/dx."""
    _, pullback = jax.vjp(fn, x)
    return jax.vmap(lambda v: jnp.sum(pullback(v)[0] ** 2))(probes)


def spectral_smoothness_of(table_PxPxC: jax.Array) -> jax.Array:
    """Share of the non-constant DFT power of f(a, b) (channels summed) at folded frequencies
    both <= p // 4; 1 when there is no non-constant power."""
    p = table_PxPxC.shape[0]
    power = jnp.sum(jnp.abs(jnp.fft.fft2(table_PxPxC.astype(jnp.float32), axes=(0, 1))) ** 2, -1)
    k = jnp.arange(p)
    folded = jnp.minimum(k, p - k)
    low = (folded[:, None] <= p // 4) & (folded[None, :] <= p // 4)
    everything = jnp.sum(power)
    power = power.at[0, 0].set(0.0)
    total = jnp.sum(power)
    # non-constant power at float32 rounding level (1e-7 of the whole, squared) is no signal
    constant = total <= 1e-12 * everything
    return jnp.where(constant, 1.0,
                     jnp.sum(jnp.where(low, power, 0.0)) / jnp.maximum(total, 1e-30))


def weight_norms_of(params) -> dict[str, jax.Array]:
    """L2 norm per module (the path of a leaf without its own name, ``params/`` dropped)."""
    groups: dict[str, list[jax.Array]] = {}
    for path, leaf in traverse_util.flatten_dict(params).items():
        module = "/".join(str(p) for p in path[:-1] if p != "params") or str(path[-1])
        groups.setdefault(module, []).append(jnp.sum(leaf.astype(jnp.float32) ** 2))
    return {f"weight_norm/{m}": jnp.sqrt(sum(v)) for m, v in groups.items()}


def adam_states(opt_state) -> list[optax.ScaleByAdamState]:
    """Every Adam state inside an optax chain (adamw: one; muon: the non-matrix part's)."""
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    return [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]


def adam_stats_of(opt_state, b1: float, b2: float, lr_t: jax.Array) -> dict[str, jax.Array]:
    """Means over every Adam-updated entry of bias-corrected sqrt(v) and |m| / (sqrt(v) + eps),
    and lr_t / (that mean sqrt(v) + eps)."""
    sums = {"adam_sqrt_v": 0.0, "adam_snr": 0.0}
    count = 0
    for s in adam_states(opt_state):
        t = s.count.astype(jnp.float32)
        for m, v in zip(jax.tree.leaves(s.mu), jax.tree.leaves(s.nu), strict=True):
            root = jnp.sqrt(v.astype(jnp.float32) / (1.0 - b2**t))
            m_hat = m.astype(jnp.float32) / (1.0 - b1**t)
            sums["adam_sqrt_v"] += jnp.sum(root)
            sums["adam_snr"] += jnp.sum(jnp.abs(m_hat) / (root + ADAM_EPS))
            count += v.size
    out = {k: v / max(count, 1) for k, v in sums.items()}
    # of the mean sqrt(v), not the mean of lr_t / (sqrt(v) + eps): entries whose gradient is
    # always 0 (unused tokens' rows) have v = 0 and would make that mean lr_t / eps
    return out | {"adam_eff_lr": lr_t / (out["adam_sqrt_v"] + ADAM_EPS)}


def update_decay_ratio_of(updates, params, weight_decay: jax.Array) -> jax.Array:
    """||u|| / ||wd * p|| over the decayed leaves (NaN when wd = 0)."""
    mask = decay_mask(params)
    pick = lambda t: [x for x, m in zip(jax.tree.leaves(t), jax.tree.leaves(mask),  # noqa: E731
                                        strict=True) if m]
    u = jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in pick(updates)))
    p = jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in pick(params)))
    return jnp.where(weight_decay > 0, u / (weight_decay * p), jnp.nan)


# ---- estimators on a training state ----------------------------------------------------------

class Context(NamedTuple):
    """What an estimator reads (built inside :func:`compute`'s jit)."""

    model: SequenceModel
    task: Any
    params: Any
    opt_state: Any
    batch: Any  # the next step's training batch
    key: jax.Array  # for random probes
    n_probes: int
    lr_t: jax.Array  # the learning rate at this step (schedule applied)
    weight_decay: jax.Array
    b1: float
    b2: float
    optimizer: Optimizer

    def loss(self, params) -> jax.Array:
        return self.task.loss(self.model.apply(params, self.task.inputs(self.batch)), self.batch)

    def examples(self):
        """The first SUBSAMPLE examples of the batch, each with a batch axis of 1 (vmap maps
        over the leading axis)."""
        return jax.tree.map(lambda x: x[:SUBSAMPLE, None], self.batch)


def _grad_norm(c: Context) -> dict[str, jax.Array]:
    return {"grad_norm": optax.tree.norm(jax.grad(c.loss)(c.params))}


def _hessian_trace(c: Context) -> dict[str, jax.Array]:
    probes = rademacher_probes(c.params, c.key, c.n_probes)
    return {"hessian_trace": jnp.mean(hessian_quadratic_forms(c.loss, c.params, probes))}


def _fisher_trace(c: Context) -> dict[str, jax.Array]:
    def example_loss(params, e):
        return c.task.loss(c.model.apply(params, c.task.inputs(e)), e)

    return {"fisher_trace": jnp.mean(per_example_grad_sq_norms(example_loss, c.params,
                                                               c.examples()))}


def _input_jacobian_norm(c: Context) -> dict[str, jax.Array]:
    x = c.task.inputs(jax.tree.map(lambda v: v[:SUBSAMPLE], c.batch))
    h, stats = c.model.apply(c.params, x, method=SequenceModel.embed)
    fn = lambda h: c.model.apply(c.params, h, stats, method=SequenceModel.from_embedding)  # noqa
    out = jax.eval_shape(fn, h)
    probes = jax.random.normal(c.key, (c.n_probes, *out.shape), out.dtype)
    sq = jnp.mean(vjp_sq_norms(fn, h, probes))
    return {"input_jacobian_norm": jnp.sqrt(sq / x.shape[0])}


def _spectral_smoothness(c: Context) -> dict[str, jax.Array]:
    grid_PxPxT = c.task.residue_grid()
    p = grid_PxPxT.shape[0]
    logits = c.task.answer_logits(c.model.apply(c.params, grid_PxPxT.reshape(p * p, -1)))
    return {"spectral_smoothness": spectral_smoothness_of(logits.reshape(p, p, -1))}


def _representation_norm(c: Context) -> dict[str, jax.Array]:
    x = c.task.inputs(jax.tree.map(lambda v: v[:SUBSAMPLE], c.batch))
    h = c.model.apply(c.params, x, method=SequenceModel.features).astype(jnp.float32)
    return {"representation_norm": jnp.sqrt(jnp.mean(jnp.sum(h**2, -1)))}


def _weight_norms(c: Context) -> dict[str, jax.Array]:
    return weight_norms_of(c.params)


def _adam(c: Context) -> dict[str, jax.Array]:
    grads = jax.grad(c.loss)(c.params)
    # the direction u from the optimizer's own step: p + scale * (u + wd * p) = p - u at
    # scale -1 and no decay (any optimizer of the registry, flat or per leaf)
    stepped, _, _ = c.optimizer.apply(grads, c.opt_state, c.params, jnp.float32(-1.0),
                                      jnp.float32(0.0))
    updates = jax.tree.map(lambda new, p: p - new, stepped, c.params)
    return {**adam_stats_of(c.opt_state, c.b1, c.b2, c.lr_t),
            "update_decay_ratio": update_decay_ratio_of(updates, c.params, c.weight_decay)}


ESTIMATORS: dict[str, Callable[[Context], dict[str, jax.Array]]] = {
    "grad_norm": _grad_norm,
    "hessian_trace": _hessian_trace,
    "fisher_trace": _fisher_trace,
    "input_jacobian_norm": _input_jacobian_norm,
    "spectral_smoothness": _spectral_smoothness,
    "representation_norm": _representation_norm,
    "weight_norms": _weight_norms,
    "adam": _adam,
}

if tuple(ESTIMATORS) != config.DIAGNOSTICS:  # config checks train.diagnostics by these names
    raise ImportError(f"tuner.core.diagnostics {tuple(ESTIMATORS)} != tuner.core.config "
                      f"{config.DIAGNOSTICS}")


@functools.partial(jax.jit, static_argnames=("spec", "names", "n_probes"))
def compute(state, task, hp, *, spec, names: tuple[str, ...], n_probes: int
            ) -> dict[str, jax.Array]:
    """The estimators ``names`` on ``state`` (a tuner.core.steps.TrainState) and the next
    step's batch; ``spec``/``hp`` the run's StepSpec and HParams."""
    step_key = jax.random.fold_in(state.data_key, state.step)
    ctx = Context(spec.model, task, state.params, state.opt_state,
                  task.sample(step_key, spec.batch_size), jax.random.fold_in(step_key, 2),
                  n_probes, hp.lr * lr_multiplier(state.step, hp), hp.weight_decay, spec.b1,
                  spec.b2, spec.optimizer_impl())
    out: dict[str, jax.Array] = {}
    for name in names:
        out |= ESTIMATORS[name](ctx)
    return out
