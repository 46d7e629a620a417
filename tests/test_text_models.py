"""Token models: quadratic attention and bilinear MLP against numpy, KV-cache sampling against
the full forward pass, the text task and Muon, dropout determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import corpus
from data.text import TextConfig, TextTask, Tokenizer
from models import attention, block, gpt
from models.config import ModelConfig
from models.sequence_model import SequenceModel
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run

TOK = dict(input_layer="tokens", head="classifier", n_layers=2, d_model=16, n_heads=2, d_ff=24)


def generate_without_cache(model, params, prompt_BxW, key, *, n_new, temperature=1.0,
                           top_k=None, top_p=None):
    """The oracle for :func:`models.gpt.generate`: the full forward pass over the whole text for
    every new token, token i drawn with ``fold_in(key, i)`` as there."""
    x = prompt_BxW
    for i in range(n_new):
        logits = model.apply(params, x)[:, -1]
        tok = gpt.sample_token(logits, jax.random.fold_in(key, i), temperature, top_k, top_p)
        x = jnp.concatenate([x, tok[:, None]], axis=1)
    return x[:, prompt_BxW.shape[1]:]


def test_quadratic_attention_matches_numpy():
    """(q.k / K)^2 under the causal mask, no softmax, times V, through the output projection."""
    cfg = ModelConfig(**TOK, backbone="toy", attention="quadratic")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    mod = attention.Attention(cfg, "quadratic", rope=False, qkv="split")
    params = mod.init(jax.random.PRNGKey(1), x, jnp.arange(5))
    out, _ = mod.apply(params, x, jnp.arange(5))
    p = jax.tree.map(np.asarray, params["params"])
    xn = np.asarray(x, np.float64)
    q, k, v = (np.einsum("bld,dk->blk", xn, p[n]["kernel"]).reshape(2, 5, 2, 8) for n in "qkv")
    want = np.zeros((2, 5, 2, 8))
    for i in range(5):
        for j in range(i + 1):
            w = (np.einsum("bhk,bhk->bh", q[:, i], k[:, j]) / 8) ** 2
            want[:, i] += w[..., None] * v[:, j]
    want = want.reshape(2, 5, 16) @ p["out"]["kernel"]
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)


def test_bilinear_mlp_matches_numpy():
    """down((W x) * (V x)), no activation."""
    cfg = ModelConfig(**TOK, backbone="toy", mlp="bilinear")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 16))
    mod = block.BilinearMLP(cfg)
    params = mod.init(jax.random.PRNGKey(1), x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    xn = np.asarray(x, np.float64)
    want = ((xn @ p["w"]["kernel"]) * (xn @ p["v"]["kernel"])) @ p["down"]["kernel"]
    np.testing.assert_allclose(np.asarray(mod.apply(params, x)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", [
    dict(backbone="toy", attention="quadratic", mlp="bilinear", norm="rmsnorm",
         tie_embeddings=True),
    dict(backbone="toy", attention="softmax", mlp="none", rope=True),
    dict(backbone="gpt", pos_embedding=True, max_len=32, tie_embeddings=True, dropout=0.1),
])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(top_k=4),
                                      dict(top_p=0.8, temperature=0.7)])
def test_kv_cache_sampling_equals_full_forward(kw, sampling):
    """Under one key, sampling through the KV cache gives the same tokens as recomputing the
    full forward pass each step (greedy, top-k, top-p)."""
    model = SequenceModel(ModelConfig(**TOK, **kw), dim_y=13)
    prompt = jax.random.randint(jax.random.PRNGKey(0), (3, 6), 0, 13)
    params = model.init(jax.random.PRNGKey(1), prompt)
    params = jax.tree.map(lambda a: a * 8.0, params)  # sharper logits: sampling matters
    key = jax.random.PRNGKey(7)
    cached = gpt.generate(model, params, prompt, key, n_new=8, **sampling)
    full = generate_without_cache(model, params, prompt, key, n_new=8, **sampling)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    assert np.isfinite(np.asarray(gpt.filter_logits(logits, 2, None))).sum() == 2
    kept = np.isfinite(np.asarray(gpt.filter_logits(logits, None, 0.7)))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])  # 0.5 < 0.7 <= 0.8


def test_corpus_and_split_are_deterministic(tmp_path):
    assert corpus.generate(2000, seed=3) == corpus.generate(2000, seed=3)
    path = tmp_path / "t.txt"
    path.write_text("héllo world\n" * 50)
    for kind in ("byte", "char"):
        task = TextTask.create(TextConfig(path=str(path), tokenizer=kind, seq_len=8))
        text = task.tokenizer.decode(np.concatenate([task.train_ids, task.val_ids]))
        assert text == path.read_text()
    assert Tokenizer.fit("byte", "x").vocab == 256


@pytest.mark.parametrize("optimizer,backbone", [("adamw", "gpt"), ("muon", "toy")])
def test_language_model_learns_the_story_corpus(optimizer, backbone):
    """A tiny model beats the unigram predictor on held-out text within 150 steps; Muon and
    dropout (gpt) run through the same trainer."""
    cfg = replace(RunConfig(), task="text", **{
        "text.seq_len": 32, "text.corpus_chars": 30000, "model.input_layer": "tokens",
        "model.head": "classifier", "model.backbone": backbone, "model.n_layers": 1,
        "model.d_model": 32, "model.n_heads": 2, "model.d_ff": 64, "model.tie_embeddings": True,
        "model.pos_embedding": backbone == "gpt", "model.max_len": 32,
        "model.dropout": 0.1 if backbone == "gpt" else 0.0, "train.optimizer": optimizer,
        "train.steps": 150, "train.lr": 3e-3, "train.eval_every": 150, "train.batch_size": 16,
        "train.eval_batch": 64})
    run = Run(cfg)
    last = {}
    run.train(run.init_state(), lambda m, s: last.update(m))
    unigram = run.task.zero_predictor_metrics()["ce"]
    assert last["eval/ce"] < 0.8 * unigram, (last, unigram)
