"""Rollout evaluation after training (SPEC section 3).

Warm up on the first ``warmup`` observations of each held-out sequence, generate autoregressively
with the KV cache (the model's own predictions fed back), and score horizon h by the squared error
of generated step h against the true y, normalized by the KF's h-step error (``eval/score_t+{h}``).

Every sequence is drawn from its own key, and errors are summed per sequence in float64 on the
host, so splitting the rollouts into chunks (to fit device memory) leaves the numbers unchanged.
Each score carries its Monte-Carlo standard error (``eval/score_se_t+{h}``: the spread of the
per-sequence errors over sqrt(n), in the same units), about 1.1% of the score at 8192 rollouts.

:class:`RolloutConfig` (the ``rollout`` section) lives here, beside the only code that reads it,
as ``LDSConfig`` lives in :mod:`data.lds`. A module of its own would spare no import: building
the RunConfig imports every task through :mod:`data.registry`, JAX included.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from data import kalman
from data.lds import sample

if TYPE_CHECKING:  # types only: the task rolls out through the model object it is handed
    from models.sequence_model import SequenceModel

SCORE_PREFIX = "eval/score_t+"  # + horizon: model h-step error / KF h-step error
SCORE_SE_PREFIX = "eval/score_se_t+"  # + horizon: its Monte-Carlo standard error


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Autoregressive evaluation after training (SPEC section 3).

    The LDS task's ``rollout`` section of the RunConfig (``--rollout.*``)."""

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


def memory_per_sequence(model: SequenceModel, warmup: int, n_steps: int) -> int:
    """Estimated peak device bytes per rollout sequence.

    KV cache (2 x layers x slots x d_model in the compute dtype) plus the prefill's activations
    (the residual stream, MLP hidden and q/k/v per token and layer, in the compute dtype: bf16
    halves them; checked against the measured peak in bench/README.md) and one
    layer's attention scores (heads x tokens^2, float32). Generated steps reuse the cache; their
    activations are negligible.
    """
    c = model.cfg
    p = c.patch_size
    prefill_tokens = warmup // p + 1
    slots = warmup // p + n_steps // p
    item = jnp.dtype(c.dtype).itemsize
    kv = 2 * c.n_layers * slots * c.d_model * item
    acts = prefill_tokens * (6 * c.d_model + 2 * c.d_ff) * item
    scores = c.n_heads * prefill_tokens * prefill_tokens * 4
    return kv + acts + scores


def chunk_size(model: SequenceModel, cfg: RolloutConfig) -> int:
    """Sequences per chunk: the fewest chunks within the budget, split evenly (the last one is
    padded to the same size, so every chunk runs the one compiled program)."""
    per_seq = memory_per_sequence(model, cfg.warmup, cfg.n_steps)
    fits = max(1, int(cfg.memory_budget_gb * 2**30 // per_seq))
    n_chunks = math.ceil(cfg.n_sequences / fits)
    return math.ceil(cfg.n_sequences / n_chunks)


@functools.partial(jax.jit, static_argnames=("model", "warmup", "n_steps"))
def _rollout_errors(params, system, keys, *, model: SequenceModel, warmup: int, n_steps: int):
    """Squared error per sequence and generated step, (B, n_steps), for sequences from ``keys``."""
    y_BxTxY = jax.vmap(lambda k: sample(system, k, 1, warmup + n_steps)[0])(keys)
    gen = model.generate(params, y_BxTxY[:, :warmup], n_steps)
    return jnp.sum((gen - y_BxTxY[:, warmup:]) ** 2, -1)


def evaluate_rollouts(params, task, model: SequenceModel, cfg: RolloutConfig,
                      chunk: int | None = None) -> dict[str, float]:
    """Scores ``eval/score_t+{h}`` (model h-step error / KF h-step error) for each horizon."""
    chunk = chunk or chunk_size(model, cfg)
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed), cfg.n_sequences)
    n_padded = math.ceil(cfg.n_sequences / chunk) * chunk
    # pad with repeats of the first keys: one shape, one compile; padded rows are dropped
    keys = jnp.concatenate([keys, keys[: n_padded - cfg.n_sequences]])
    totals = np.zeros(cfg.n_steps, np.float64)
    squares = np.zeros(cfg.n_steps, np.float64)
    for start in range(0, n_padded, chunk):
        err = _rollout_errors(params, task.system, keys[start : start + chunk], model=model,
                              warmup=cfg.warmup, n_steps=cfg.n_steps)
        real = np.asarray(err, np.float64)[: min(chunk, cfg.n_sequences - start)]
        totals += real.sum(0)
        squares += (real**2).sum(0)
    n = cfg.n_sequences
    mse = totals / n
    se = np.sqrt(np.maximum(squares / n - mse**2, 0.0) * n / max(n - 1, 1) / n)
    kf = kalman.h_step_mse(task.system, cfg.warmup, cfg.horizons)
    return ({f"eval/score_t+{h}": float(mse[h - 1] / kf[h]) for h in cfg.horizons}
            | {f"{SCORE_SE_PREFIX}{h}": float(se[h - 1] / kf[h]) for h in cfg.horizons})


def describe_memory(model: SequenceModel, cfg: RolloutConfig) -> str:
    per_seq = memory_per_sequence(model, cfg.warmup, cfg.n_steps)
    chunk = chunk_size(model, cfg)
    return (f"rollout memory estimate: {per_seq / 2**20:.3f} MiB/sequence, "
            f"{cfg.n_sequences} sequences in {math.ceil(cfg.n_sequences / chunk)} chunk(s) of "
            f"<= {chunk} ({chunk * per_seq / 2**30:.2f} GiB per chunk, budget "
            f"{cfg.memory_budget_gb} GiB)")
