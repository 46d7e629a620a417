"""Bigram task: next-token prediction on sequences from a fixed random Markov chain.

The chain over V tokens has rows P[i] ~ Dirichlet(concentration * 1_V), drawn once from
``chain_seed``; sequences start from the stationary distribution pi. The optimal predictor of
x_{t+1} given x_{<=t} is P[x_t], so its expected cross-entropy is the chain's conditional
entropy H = -sum_i pi_i sum_j P_ij log P_ij: the analogue of the LDS's Kalman filter. The
unigram predictor (always pi) scores the entropy of pi: the analogue of the zero predictor.

Metrics (nats): ``ce``, ``perplexity`` = exp(ce), ``accuracy`` (arg-max), ``entropy`` (H),
and under the service's normalized-score names: ``nmse`` = ce / H (1 is optimal, as the KF is
for the LDS), ``skill`` = (ce_unigram - ce) / (ce_unigram - H), ``nmse_info`` = nmse (a bigram
model sees everything the optimum sees; kept so the experiment report's columns exist).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from data import tokens
from data.task import NothingAfterTraining


@dataclasses.dataclass(frozen=True)
class BigramConfig:
    """The chain and its sequences. V = vocab."""

    vocab: int = 16  # V, number of states/tokens
    concentration: float = 0.5  # Dirichlet concentration of each row (small: peaked rows)
    seq_len: int = 64  # T, tokens per sequence (the model predicts T-1 of them)
    chain_seed: int = 0  # which chain (fixed per run, like the LDS's system_seed)

    def __post_init__(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"BigramConfig.vocab={self.vocab}; allowed: >= 2")
        if not self.concentration > 0:
            raise ValueError(f"BigramConfig.concentration={self.concentration}; allowed: > 0")
        if self.seq_len < 2:
            raise ValueError(f"BigramConfig.seq_len={self.seq_len}; allowed: >= 2")


def make_chain(cfg: BigramConfig) -> tuple[np.ndarray, np.ndarray]:
    """Transition matrix P (V, V), rows summing to 1, and its stationary distribution pi (V,)."""
    rng = np.random.default_rng(cfg.chain_seed)
    p = rng.dirichlet(np.full(cfg.vocab, cfg.concentration), size=cfg.vocab)
    p = np.maximum(p, 1e-12)
    p /= p.sum(1, keepdims=True)
    w, v = np.linalg.eig(p.T)
    pi = np.abs(np.real(v[:, np.argmin(np.abs(w - 1.0))]))
    return p, pi / pi.sum()


def conditional_entropy(p: np.ndarray, pi: np.ndarray) -> float:
    """H(X_{t+1} | X_t) under the stationary distribution, nats: the optimal loss."""
    return float(-(pi[:, None] * p * np.log(p)).sum())


def entropy(pi: np.ndarray) -> float:
    """Entropy of pi, nats: the cross-entropy of the unigram predictor."""
    return float(-(pi * np.log(pi)).sum())


@flax.struct.dataclass
class BigramTask(NothingAfterTraining):
    """A fixed chain; implements the task contract of data.lds_task.LDSTask for tokens."""

    log_p_VxV: jax.Array  # log transition probabilities
    log_pi_V: jax.Array  # log stationary distribution
    h_cond: jax.Array  # () optimal cross-entropy
    h_unigram: jax.Array  # () unigram predictor's cross-entropy
    cfg: BigramConfig = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, cfg: BigramConfig) -> BigramTask:
        p, pi = make_chain(cfg)
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return cls(f32(np.log(p)), f32(np.log(pi)), f32(conditional_entropy(p, pi)),
                   f32(entropy(pi)), cfg)

    METRICS = ("ce", "perplexity", "accuracy", "entropy", "nmse", "nmse_info", "skill")
    REPORTED = ("nmse", "ce", "accuracy", "skill")  # nmse = CE / optimum
    HIGHER_IS_BETTER = ("accuracy", "skill")
    SYSTEM_METRICS = ("entropy",)
    SYSTEM_TEXT = "`entropy` = the chain's conditional entropy, the optimal cross-entropy"
    LEARNING_CHECK = ("skill", 0.05)  # closes 5% of the unigram -> optimum gap
    SYSTEM_SEED = "bigram.chain_seed"
    MILESTONES = ()

    CONFIG = {"bigram": BigramConfig}  # its RunConfig section (--bigram.*); see data.task.Task

    @classmethod
    def check_config(cls, cfg) -> None:
        """Nothing across sections: any model reads any chain."""
        del cfg

    @classmethod
    def from_run_config(cls, cfg) -> BigramTask:
        return cls.create(cfg.bigram)

    @property
    def io_dim(self) -> int:
        return self.cfg.vocab

    def dummy_input(self) -> jax.Array:
        return jnp.zeros((1, self.cfg.seq_len - 1), jnp.int32)

    def sample(self, key: jax.Array, batch: int) -> jax.Array:
        """x_BxT int32: x_0 ~ pi, x_{t+1} ~ P[x_t]."""
        k0, k_rest = jax.random.split(key)
        x0_B = jax.random.categorical(k0, self.log_pi_V, shape=(batch,))

        def step(x_B, k):
            nxt = jax.random.categorical(k, self.log_p_VxV[x_B], axis=-1)
            return nxt, nxt

        _, rest_TxB = jax.lax.scan(step, x0_B, jax.random.split(k_rest, self.cfg.seq_len - 1))
        return jnp.concatenate([x0_B[:, None], rest_TxB.T], 1).astype(jnp.int32)

    eval_sample = sample

    @staticmethod
    def inputs(x_BxT: jax.Array) -> jax.Array:
        return x_BxT[:, :-1]

    def loss(self, logits_BxLxV: jax.Array, x_BxT: jax.Array) -> jax.Array:
        """Mean next-token cross-entropy, nats."""
        return jnp.mean(tokens.cross_entropy(logits_BxLxV, x_BxT[:, 1:]))

    @staticmethod
    def eval_stats(logits_BxLxV: jax.Array, x_BxT: jax.Array) -> dict[str, jax.Array]:
        return {"ce": jnp.mean(tokens.cross_entropy(logits_BxLxV, x_BxT[:, 1:])),
                "accuracy": jnp.mean(tokens.correct(logits_BxLxV, x_BxT[:, 1:]))}

    def eval_metrics(self, stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
        ce = stats["ce"]
        nmse = ce / self.h_cond
        return {"ce": ce, "perplexity": jnp.exp(ce), "accuracy": stats["accuracy"],
                "entropy": self.h_cond, "nmse": nmse, "nmse_info": nmse,
                "skill": (self.h_unigram - ce) / (self.h_unigram - self.h_cond)}

    def zero_predictor_metrics(self) -> dict[str, float]:
        """What the unigram predictor (always pi) scores in expectation."""
        stats = {"ce": self.h_unigram, "accuracy": jnp.exp(jnp.max(self.log_pi_V))}
        return {k: float(v) for k, v in self.eval_metrics(stats).items()}
