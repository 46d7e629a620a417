"""Fast paths give the same numbers as the plain ones: vmapped seeds equal separate runs,
bf16 compute stays close to float32, and the compilation cache is written and read."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from tolerance import assert_f32_close, forward_depth, train_depth

from tuner.core import steps
from tuner.core.config import RunConfig, replace
from tuner.core.loop import Run

SMALL = replace(RunConfig(), **{
    "data.dim_x": 4, "data.seq_len": 32, "model.n_layers": 1, "model.d_model": 32,
    "model.n_heads": 2, "model.d_ff": 64, "train.batch_size": 8, "train.steps": 30,
    "train.lr": 3e-3})
# vmapped and separate runs are separately compiled programs: equal to float32 rounding
# (tests/tolerance.py), here ~2e-4 x the compared array's scale after 30 steps
FORWARD_DEPTH = forward_depth(n_layers=1, d_model=32, d_ff=64, seq_len=32, head_dim=16)


def test_vmapped_seeds_equal_separate_runs():
    run = Run(SMALL)
    seeds = [0, 1, 7]
    states, metrics = steps.train_steps_seeds(
        steps.init_states(run.spec, run.task, seeds), steps.stack([run.task] * 3),
        run.hparams, spec=run.spec, n_steps=30)
    for i, seed in enumerate(seeds):
        alone, m = steps.train_steps(steps.init_state(run.spec, run.task, seed), run.task,
                                       run.hparams, spec=run.spec, n_steps=30)
        depth = train_depth(FORWARD_DEPTH, 30)
        assert_f32_close(metrics["loss"][i], m["loss"], depth)
        for a, b in zip(jax.tree.leaves(alone.params),
                        jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], states.params)),
                        strict=True):
            assert_f32_close(b, a, depth)


def test_bf16_compute_tracks_float32():
    """Same seed, 30 steps: bf16 activations with float32 weights and loss stay within 2%."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = replace(SMALL, **{"model.compute_dtype": dtype})
        run = Run(cfg)
        history: list[float] = []
        run.train(run.init_state(), lambda m, s, h=history: h.append(m["eval/nmse"]))
        losses[dtype] = history[-1]
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.02)


def test_compilation_cache_is_written_then_read(tmp_path):
    """A second process compiling the same programs loads them from the cache (JAX's own
    monitoring events count the hits) and writes nothing new."""
    script = (
        "import sys, jax; from tuner.core.compile_cache import enable; enable(sys.argv[1]);"
        "events = [];"
        "jax.monitoring.register_event_listener(lambda e, **kw: events.append(e));"
        "from tests.test_speed_paths import SMALL; from tuner.core.loop import Run;"
        "r = Run(SMALL); r.train(r.init_state(), lambda m, s: None);"
        "print('HITS', events.count('/jax/compilation_cache/cache_hits'))")
    # this module imports the tests' own helpers (tests/tolerance.py) by their bare name
    tests_dir = os.path.dirname(__file__)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))

    def hits() -> int:
        res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                             text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        return int(res.stdout.split("HITS")[-1])

    cold = hits()  # may hit where two jitted functions lower to the same program
    entries = set(os.listdir(tmp_path))
    assert entries
    warm = hits()
    assert warm >= cold + 3  # at least init, the train steps and the evaluation
    assert set(os.listdir(tmp_path)) == entries


def test_train_seeds_equal_separate_runs():
    """tuner.core.loop.train_seeds (one vmapped program) reports what each seed's own run does,
    each seed on its own system (seed_config), scored on the finals' own held-out key."""
    from tuner.core.loop import train_seeds
    from tuner.core.seeds import FINALS_EVAL_SEED, seed_config

    cfg = replace(SMALL, **{"train.steps": 20, "train.eval_every": 10})
    seen: dict[int, list[dict]] = {0: [], 5: []}

    def record(step, progress, states):
        for seed, m in zip((0, 5), progress.last, strict=True):
            seen[seed].append(dict(m))

    states, last = train_seeds(cfg, [0, 5], record)
    for i, seed in enumerate((0, 5)):
        alone: list[dict] = []
        own = seed_config(cfg, seed)
        assert own.data.system_seed == cfg.data.system_seed + 1 + seed
        assert (own.train.seed, own.train.eval_seed) == (seed, FINALS_EVAL_SEED)
        run = Run(own)
        state = run.train(run.init_state(), lambda m, s, h=alone: h.append(m))
        assert [m["step"] for m in seen[seed]] == [m["step"] for m in alone] == [10, 20]
        for ours, theirs in zip(seen[seed], alone, strict=True):
            # the evaluation is one more forward pass on the trained parameters; the skill
            # (1 - nmse ratio) is compared on the scale of its O(1) terms
            depth = train_depth(FORWARD_DEPTH, int(ours["step"])) + FORWARD_DEPTH
            for key in ("train_loss", "eval/nmse"):
                assert_f32_close(ours[key], theirs[key], depth, key)
            assert_f32_close(ours["eval/skill"], theirs["eval/skill"], depth, scale=1.0)
        assert last[i] == seen[seed][-1]
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(states[i].params),
                        strict=True):
            assert_f32_close(b, a, train_depth(FORWARD_DEPTH, 20))


def test_cudnn_attention_matches_xla():
    """cuDNN flash attention (bf16, head dim 64, causal) equals the XLA path; GPU only."""
    if jax.default_backend() != "gpu":
        pytest.skip("cuDNN attention needs a GPU")
    import jax.numpy as jnp

    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    shape = (4, 256, 4, 64)
    q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in (kq, kk, kv))
    out = {impl: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
           for impl in ("xla", "cudnn")}
    np.testing.assert_allclose(np.asarray(out["cudnn"], np.float32),
                               np.asarray(out["xla"], np.float32), atol=2e-2, rtol=2e-2)


def test_gpu_share_sets_the_memory_fraction(monkeypatch):
    """A quarter of a GPU caps JAX's pool below a quarter (headroom), without importing JAX."""
    from tuner.core import gpu_share

    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true --xla_dump_to=/x")
    gpu_share.configure(0.25)
    assert 0.2 < float(os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"]) <= 0.25
    assert os.environ["XLA_FLAGS"].split() == ["--xla_gpu_enable_triton_gemm=true",
                                               "--xla_dump_to=/x"]  # the caller's flags win
    monkeypatch.delenv("XLA_FLAGS")
    gpu_share.configure(1.0)
    assert "--xla_gpu_enable_triton_gemm=false" in os.environ["XLA_FLAGS"]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            gpu_share.configure(bad)


def test_train_seeds_resumes_from_a_checkpoint_exactly(tmp_path):
    """Stopped after the first evaluation and resumed from the saved stacked state and
    progress (what the finals trial checkpoints), the seeds end where an uninterrupted run
    ends."""
    from tuner.core import checkpoint
    from tuner.core.loop import SeedRuns, train_seeds

    cfg = replace(SMALL, **{"train.steps": 20, "train.eval_every": 10})
    _, uninterrupted = train_seeds(cfg, [0, 5])

    class Stop(Exception):
        pass

    def save_and_stop(step, progress, states):
        checkpoint.save(tmp_path / "ckpt", states, progress)
        raise Stop

    with pytest.raises(Stop):
        train_seeds(cfg, [0, 5], save_and_stop)
    states, progress = checkpoint.restore(tmp_path / "ckpt", SeedRuns(cfg, [0, 5]).init_states())
    assert int(states.step[0]) == 10
    _, resumed = train_seeds(cfg, [0, 5], states=states, progress=progress)
    for full, res in zip(uninterrupted, resumed, strict=True):
        assert full["step"] == res["step"] == 20
        for key in ("train_loss", "eval/nmse", "eval/skill"):
            # one compiled program on a bit-exact restored state, in one process: rtol 1e-5
            # (~80 eps32) only covers the evaluation's reduction order
            np.testing.assert_allclose(res[key], full[key], rtol=1e-5)


def test_vmapped_members_equal_separate_runs():
    """K trials of a cell (different learning rates and decays, one shared task) in one
    vmapped program: each member's losses and parameters are those of its own run."""
    run = Run(SMALL)
    hps = [replace(SMALL, **{"train.lr": lr, "train.weight_decay": wd}).train
           for lr, wd in ((1e-3, 0.0), (3e-3, 0.1), (1e-2, 0.01))]
    stacked = steps.stack([steps.HParams.from_config(t) for t in hps])
    states = steps.stack([steps.init_state(run.spec, run.task, 0) for _ in hps])
    states, metrics = steps.train_steps_members(states, run.task, stacked, spec=run.spec,
                                                n_steps=30)
    for i, t in enumerate(hps):
        alone, m = steps.train_steps(steps.init_state(run.spec, run.task, 0), run.task,
                                     steps.HParams.from_config(t), spec=run.spec, n_steps=30)
        # an AMD EPYC differed from its separate run by 1.5e-7 (6.3e-5 relative: an element
        # near zero) where this allows ~1e-4 x the leaf's scale; the rates differ by 3x, which
        # moves parameters by ~1e-2
        depth = train_depth(FORWARD_DEPTH, 30)
        assert_f32_close(metrics["loss"][i], m["loss"], depth)
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(steps.unstack(states, i)
                                                                      .params), strict=True):
            assert_f32_close(b, a, depth)
    assert not np.allclose(metrics["loss"][0], metrics["loss"][2])  # the rates did differ
