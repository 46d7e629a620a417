"""Bigram task: the chain's exact optimum and a model that reaches it."""

from __future__ import annotations

import numpy as np

from data.bigram import BigramConfig, conditional_entropy, entropy, make_chain
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run

MODEL = {"model.input_layer": "tokens", "model.backbone": "transformer",
         "model.head": "classifier", "model.n_layers": 1, "model.d_model": 32,
         "model.n_heads": 2, "model.d_ff": 64}


def optimal_logits(task, x_BxT):
    """The true chain's log-probabilities as logits: the optimal predictor."""
    return task.log_p_VxV[x_BxT[:, :-1]]


def test_optimum_is_the_chains_conditional_entropy():
    """The true chain's logits score H(X'|X) on sampled data (Monte Carlo, 1%), and H is
    computed under the stationary distribution (pi P = pi)."""
    import jax

    cfg = BigramConfig(vocab=8, seq_len=64)
    p, pi = make_chain(cfg)
    np.testing.assert_allclose(pi @ p, pi, atol=1e-10)
    run = Run(replace(RunConfig(), task="bigram", **{"bigram.vocab": 8}, **MODEL))
    x = run.task.sample(jax.random.PRNGKey(0), 512)
    stats = run.task.eval_stats(optimal_logits(run.task, x), x)
    h = conditional_entropy(p, pi)
    assert abs(float(stats["ce"]) / h - 1) < 0.01
    assert entropy(pi) > h


def test_transformer_reaches_the_optimum_and_unigram_does_not():
    """Trained 400 steps, the model's CE is within 5% of the chain's entropy; the unigram
    predictor (stationary distribution everywhere), the bar to clear, is not."""
    cfg = replace(RunConfig(), task="bigram", **MODEL,
                  **{"train.steps": 400, "train.lr": 3e-3, "train.eval_every": 400,
                     "train.batch_size": 32, "train.eval_batch": 512})
    run = Run(cfg)
    last = {}
    run.train(run.init_state(), lambda m, s: last.update(m))
    p, pi = make_chain(cfg.bigram)
    h, h_unigram = conditional_entropy(p, pi), entropy(pi)
    assert last["eval/ce"] / h < 1.05, last
    assert h_unigram / h > 1.05
    assert abs(last["eval/nmse"] - last["eval/ce"] / last["eval/entropy"]) < 1e-5
