"""Modular arithmetic (grokking): predict (a op b) mod p from the tokens [a, op, b, =].

All p^2 pairs are split once (``split_seed``) into a train set of round(train_frac * p^2)
pairs and a test set of the rest. Training is full batch: ``sample`` returns the whole train set
whatever the key and ``train.batch_size`` (which this task ignores). Evaluation scores train and
test sets together, so one evaluation gives both accuracies and losses.

Tokens: 0..p-1 are the numbers, p is "+", p+1 is "*", p+2 is "="; the model reads the four
tokens and is scored on its output at the last position ("="), over the p answer tokens only.

The grokking step (first evaluated step with test accuracy >= 95%) needs the history of
evaluations; :func:`grokking_step` computes it from the per-evaluation records
(``metrics.jsonl`` of ``tuner.train``, or a Tune trial's results).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from data import tokens
from data.task import NothingAfterTraining

OPS = {"+": np.add, "*": np.multiply}
GROKKED = 0.95  # test accuracy that counts as generalised


@dataclasses.dataclass(frozen=True)
class ModularConfig:
    """The operation, modulus and split."""

    p: int = 17  # prime modulus (17 quick, 113 the classic)
    op: str = "+"  # + | *
    train_frac: float = 0.3  # fraction of the p^2 pairs trained on (30-50% in the literature)
    split_seed: int = 0  # which pairs are in the train set

    def __post_init__(self) -> None:
        if self.p < 2 or any(self.p % d == 0 for d in range(2, int(self.p**0.5) + 1)):
            raise ValueError(f"ModularConfig.p={self.p}; allowed: a prime (e.g. 17, 113)")
        if self.op not in OPS:
            raise ValueError(f"ModularConfig.op={self.op!r}; allowed: {sorted(OPS)}")
        if not 0 < self.train_frac < 1:
            raise ValueError(f"ModularConfig.train_frac={self.train_frac}; allowed: (0, 1)")

    @property
    def vocab(self) -> int:
        return self.p + 3


def make_split(cfg: ModularConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs as token rows [a, op, b, =] (p^2, 4), answers (p^2,), train mask (p^2,)."""
    a, b = (g.ravel() for g in np.meshgrid(np.arange(cfg.p), np.arange(cfg.p), indexing="ij"))
    op_tok = cfg.p + list(OPS).index(cfg.op)
    x = np.stack([a, np.full_like(a, op_tok), b, np.full_like(a, cfg.p + 2)], 1)
    y = OPS[cfg.op](a, b) % cfg.p
    n_train = int(round(cfg.train_frac * cfg.p**2))
    order = np.random.default_rng(cfg.split_seed).permutation(cfg.p**2)
    is_train = np.zeros(cfg.p**2, bool)
    is_train[order[:n_train]] = True
    return x.astype(np.int32), y.astype(np.int32), is_train


@flax.struct.dataclass
class ModularTask(NothingAfterTraining):
    """The fixed split; implements the task contract of data.lds_task.LDSTask."""

    train_x_Nx4: jax.Array
    train_y_N: jax.Array
    all_x_Mx4: jax.Array  # every pair (train and test), M = p^2
    all_y_M: jax.Array
    is_train_M: jax.Array  # bool
    cfg: ModularConfig = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, cfg: ModularConfig) -> ModularTask:
        x, y, is_train = make_split(cfg)
        return cls(jnp.asarray(x[is_train]), jnp.asarray(y[is_train]), jnp.asarray(x),
                   jnp.asarray(y), jnp.asarray(is_train), cfg)

    METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")
    REPORTED = ("test_acc", "train_acc", "test_loss", "grokking_step")
    HIGHER_IS_BETTER = ("train_acc", "test_acc")
    SYSTEM_METRICS = ()
    LEARNING_CHECK = None  # grokking cells are judged on their milestones, not vs chance
    SYSTEM_SEED = "modular.split_seed"
    MILESTONES = (("grokking_step", "test_acc", GROKKED),)  # first step that generalises

    CONFIG = {"modular": ModularConfig}  # its RunConfig section (--modular.*); see data.task.Task

    @classmethod
    def check_config(cls, cfg) -> None:
        """Nothing across sections: any model reads the pairs."""
        del cfg

    @classmethod
    def from_run_config(cls, cfg) -> ModularTask:
        return cls.create(cfg.modular)

    @property
    def io_dim(self) -> int:
        return self.cfg.vocab

    def dummy_input(self) -> jax.Array:
        return jnp.zeros((1, 4), jnp.int32)

    def sample(self, key: jax.Array, batch: int) -> dict[str, jax.Array]:
        """The whole train set (full batch); ``key`` and ``batch`` are unused."""
        del key, batch
        return {"x": self.train_x_Nx4, "y": self.train_y_N}

    def eval_sample(self, key: jax.Array, batch: int) -> dict[str, jax.Array]:
        """Every pair, train and test, with the split mask."""
        del key, batch
        return {"x": self.all_x_Mx4, "y": self.all_y_M, "is_train": self.is_train_M}

    @staticmethod
    def inputs(b: dict[str, jax.Array]) -> jax.Array:
        return b["x"]

    def residue_grid(self) -> jax.Array:
        """Every pair's tokens as a (p, p, 4) grid, ``[a, b]`` holding (a, b): the model's
        answers as a function over the residues (the spectral diagnostic's input)."""
        p = self.cfg.p
        return self.all_x_Mx4.reshape(p, p, 4)  # make_split orders pairs a-major

    def answer_logits(self, logits_BxLxV: jax.Array) -> jax.Array:
        """Logits over the p answers at the last position, (B, p)."""
        return logits_BxLxV[:, -1, : self.cfg.p]

    def loss(self, logits_BxLxV: jax.Array, b: dict[str, jax.Array]) -> jax.Array:
        """Mean cross-entropy (float32) of the answer at "="."""
        return jnp.mean(tokens.cross_entropy(self.answer_logits(logits_BxLxV)[:, None],
                                             b["y"][:, None]))

    def eval_stats(self, logits_BxLxV: jax.Array, b: dict[str, jax.Array]
                   ) -> dict[str, jax.Array]:
        logits = self.answer_logits(logits_BxLxV)[:, None]
        ce_M = tokens.cross_entropy(logits, b["y"][:, None])[:, 0]
        ok_M = tokens.correct(logits, b["y"][:, None])[:, 0]
        tr = b["is_train"].astype(jnp.float32)
        te = 1.0 - tr
        mean = lambda v, w: jnp.sum(v * w) / jnp.sum(w)  # noqa: E731
        return {"train_loss": mean(ce_M, tr), "test_loss": mean(ce_M, te),
                "train_acc": mean(ok_M, tr), "test_acc": mean(ok_M, te)}

    @staticmethod
    def eval_metrics(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return dict(stats)

    def zero_predictor_metrics(self) -> dict[str, float]:
        """The majority-class predictor: always the most frequent training answer."""
        counts = np.bincount(np.asarray(self.train_y_N), minlength=self.cfg.p)
        guess = int(np.argmax(counts))
        y, tr = np.asarray(self.all_y_M), np.asarray(self.is_train_M)
        return {"train_acc": float(np.mean(y[tr] == guess)),
                "test_acc": float(np.mean(y[~tr] == guess))}


def grokking_step(records: Iterable[dict], metric: str = "eval/test_acc",
                  threshold: float = GROKKED) -> int | None:
    """First evaluated step whose test accuracy reaches ``threshold`` (None if never)."""
    for r in sorted(records, key=lambda r: r["step"]):
        if r.get(metric, 0.0) >= threshold:
            return int(r["step"])
    return None
