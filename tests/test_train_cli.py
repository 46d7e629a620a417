"""The one-run CLI as users type it: dot-notation overrides, outputs, resume by rerunning."""

import json
import os
import subprocess
import sys

ARGS = ["--data.dim-x", "4", "--data.seq-len", "32", "--model.n-layers", "1",
        "--model.d-model", "32", "--model.n-heads", "2", "--model.d-ff", "64",
        "--model.patch-size", "4", "--train.steps", "20", "--train.eval-every", "10",
        "--train.batch-size", "8", "--train.eval-batch", "32", "--rollout.warmup", "16",
        "--rollout.horizons", "1", "4", "8", "--rollout.n-sequences", "64"]


def cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "tuner.train", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_writes_run_folder_and_resumes(tmp_path):
    out = tmp_path / "run"
    res = cli(*ARGS, "--out-dir", str(out))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [10, 20]
    summary = json.loads((out / "summary.json").read_text())
    assert {"eval/nmse", "eval/skill", "eval/score_t+8", "wall_s"} <= summary.keys()
    assert "rollout memory estimate" in res.stdout
    # a longer budget on the same folder continues from step 20 (nothing repeated)
    res = cli(*ARGS, "--train.steps", "30", "--out-dir", str(out))  # the last value wins
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stdout
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]


def test_cli_rejects_bad_value_before_training(tmp_path):
    res = cli("--model.patch-size", "3", "--out-dir", str(tmp_path / "x"))
    assert res.returncode != 0
    assert "patch_size=3" in res.stderr and "allowed" in res.stderr
    assert not (tmp_path / "x").exists()


def test_help_lists_every_section_of_every_task():
    """The RunConfig built from the registry's sections still offers each as ``--<section>.*``."""
    from data.registry import SECTIONS

    res = cli("--help")
    assert res.returncode == 0, res.stderr
    for section in ("model", "train", *SECTIONS):
        assert f"--{section}." in res.stdout, section
    assert "--data.lambda-val" in res.stdout and "--rollout.n-sequences" in res.stdout
    assert "--task" in res.stdout and "--rollout-after" in res.stdout
