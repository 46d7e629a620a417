"""Language modelling on a local text file, byte- or character-level (SPEC section 7).

The file (``text.path``; empty: the generated corpus of data.corpus) is tokenized once on the
host. The first ``1 - val_frac`` of the tokens are the training stream and the rest the
validation stream (a contiguous, deterministic split: no leakage of overlapping windows).
A batch is B random windows of T+1 tokens; the model reads the first T and predicts the next
token at each position.

Metrics on validation windows (fixed key, the same windows every evaluation): ``ce`` (nats per
token), ``perplexity``, ``bits_per_token``, ``accuracy``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from data import corpus, tokens
from data.task import NothingAfterTraining

TOKENIZERS = ("byte", "char")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Where the text comes from and how it is cut."""

    path: str = ""  # UTF-8 text file; "" = the generated story corpus (data/corpus.py)
    tokenizer: str = "char"  # byte (V = 256) | char (V = distinct characters of the file)
    seq_len: int = 128  # T, tokens the model reads per window
    val_frac: float = 0.1  # last fraction of the token stream held out for validation
    corpus_chars: int = 200_000  # size of the generated corpus (when path is "")
    corpus_seed: int = 0  # seed of the generated corpus

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"TextConfig.tokenizer={self.tokenizer!r}; allowed: "
                             f"{list(TOKENIZERS)}")
        if self.path and not Path(self.path).is_file():
            raise ValueError(f"TextConfig.path={self.path!r} is not a file; allowed: a UTF-8 "
                             "text file, or '' for the generated corpus")
        if self.seq_len < 1:
            raise ValueError(f"TextConfig.seq_len={self.seq_len}; allowed: >= 1")
        if not 0 < self.val_frac < 1:
            raise ValueError(f"TextConfig.val_frac={self.val_frac}; allowed: (0, 1)")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Byte-level (ids = UTF-8 bytes) or character-level (ids = sorted distinct characters)."""

    kind: str
    chars: tuple[str, ...] = ()  # char-level alphabet

    @classmethod
    def fit(cls, kind: str, text: str) -> Tokenizer:
        return cls(kind, tuple(sorted(set(text))) if kind == "char" else ())

    @property
    def vocab(self) -> int:
        return 256 if self.kind == "byte" else len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        if self.kind == "byte":
            return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
        index = {c: i for i, c in enumerate(self.chars)}
        return np.array([index[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).ravel()]
        if self.kind == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)


def load_text(cfg: TextConfig) -> str:
    if cfg.path:
        return Path(cfg.path).read_text(encoding="utf-8")
    return corpus.generate(cfg.corpus_chars, cfg.corpus_seed)


@flax.struct.dataclass
class TextTask(NothingAfterTraining):
    """Token streams on the device; implements the task contract of data.lds_task.LDSTask."""

    train_ids: jax.Array  # (N_train,) int32
    val_ids: jax.Array  # (N_val,) int32
    cfg: TextConfig = flax.struct.field(pytree_node=False)
    tokenizer: Tokenizer = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, cfg: TextConfig) -> TextTask:
        text = load_text(cfg)
        tok = Tokenizer.fit(cfg.tokenizer, text)
        ids = tok.encode(text)
        n_val = int(len(ids) * cfg.val_frac)
        if min(len(ids) - n_val, n_val) < cfg.seq_len + 1:
            raise ValueError(f"text.seq_len={cfg.seq_len} is longer than the train/validation "
                             f"streams ({len(ids) - n_val}/{n_val} tokens); allowed: a shorter "
                             "seq_len or a larger text")
        return cls(jnp.asarray(ids[: len(ids) - n_val]), jnp.asarray(ids[len(ids) - n_val:]),
                   cfg, tok)

    METRICS = ("ce", "perplexity", "bits_per_token", "accuracy")
    REPORTED = ("ce", "perplexity", "accuracy")
    HIGHER_IS_BETTER = ("accuracy",)
    SYSTEM_METRICS = ()
    LEARNING_CHECK = None
    SYSTEM_SEED = None  # one corpus: seeds vary init and the sampled windows only
    MILESTONES = ()

    CONFIG = {"text": TextConfig}  # its RunConfig section (--text.*); see data.task.Task

    @classmethod
    def check_config(cls, cfg) -> None:
        """Nothing across sections: the corpus is checked when the task is built."""
        del cfg

    @classmethod
    def from_run_config(cls, cfg) -> TextTask:
        return cls.create(cfg.text)

    @property
    def io_dim(self) -> int:
        return self.tokenizer.vocab

    def dummy_input(self) -> jax.Array:
        return jnp.zeros((1, self.cfg.seq_len), jnp.int32)

    def _windows(self, ids: jax.Array, key: jax.Array, batch: int) -> jax.Array:
        t = self.cfg.seq_len + 1
        starts_B = jax.random.randint(key, (batch,), 0, ids.shape[0] - t + 1)
        return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(ids, s, t))(starts_B)

    def sample(self, key: jax.Array, batch: int) -> jax.Array:
        """x_Bx(T+1) random training windows."""
        return self._windows(self.train_ids, key, batch)

    def eval_sample(self, key: jax.Array, batch: int) -> jax.Array:
        return self._windows(self.val_ids, key, batch)

    @staticmethod
    def inputs(x_BxT1: jax.Array) -> jax.Array:
        return x_BxT1[:, :-1]

    @staticmethod
    def loss(logits_BxTxV: jax.Array, x_BxT1: jax.Array) -> jax.Array:
        return jnp.mean(tokens.cross_entropy(logits_BxTxV, x_BxT1[:, 1:]))

    @staticmethod
    def eval_stats(logits_BxTxV: jax.Array, x_BxT1: jax.Array) -> dict[str, jax.Array]:
        return {"ce": jnp.mean(tokens.cross_entropy(logits_BxTxV, x_BxT1[:, 1:])),
                "accuracy": jnp.mean(tokens.correct(logits_BxTxV, x_BxT1[:, 1:]))}

    @staticmethod
    def eval_metrics(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
        ce = stats["ce"]
        return {"ce": ce, "perplexity": jnp.exp(ce), "bits_per_token": ce / math.log(2),
                "accuracy": stats["accuracy"]}

    def zero_predictor_metrics(self) -> dict[str, float]:
        """The unigram predictor (training token frequencies), scored on the validation stream."""
        counts = np.bincount(np.asarray(self.train_ids), minlength=self.io_dim) + 1.0
        logp = np.log(counts / counts.sum())
        val = np.asarray(self.val_ids)
        ce = float(-logp[val].mean())
        return {"ce": ce, "perplexity": math.exp(ce), "bits_per_token": ce / math.log(2),
                "accuracy": float(np.mean(val == np.argmax(counts)))}
