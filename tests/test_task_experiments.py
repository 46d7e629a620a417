"""Every non-LDS task under the service: ``python -m tuner.run <task experiment> --smoke``.

One experiment per task (bigram, modular, text) runs by default; ``gpt`` (text again) with
``pytest -m extended``. The same pipeline as the LDS experiments (per-cell search, seeded
finals, report), with nothing task-specific in ``tuner/``: each run must finish, search every
cell, train every final seed to the full budget, and report the task's own metrics (no
rollouts: these tasks have none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_run import cluster_flags

from data.registry import TASKS
from tuner.core import routing
from tuner.service import experiment


def smaller_grid(name: str, tmp_path) -> Path:
    """The experiment file with its smoke grid cut to what its claims need (two values of each
    claim axis, the first value of every other axis): the same pipeline and report in fewer
    cells, so CI stays under 30 minutes."""
    raw = yaml.safe_load((experiment.SEARCH_SPACES / f"{name}.yaml").read_text())
    grid = {**raw["grid"], **(raw.get("smoke") or {}).get("grid", {})}
    claim_axes = {c[k] for c in raw.get("claims") or [] for k in ("axis", "effect_axis")
                  if c.get(k)}
    raw.setdefault("smoke", {})["grid"] = {
        axis: values[:2] if axis in claim_axes else values[:1] for axis, values in grid.items()}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("name", [
    "bigram",
    # the text task (test_text_models trains its model; the service path is bigram's)
    pytest.param("toy_lm", marks=pytest.mark.extended),
    # modular arithmetic with the routed model, its regularizer as a grid axis, diagnostics,
    # the grokking-step claim: the service path is bigram's, its parts have their own tests
    # (test_routing, test_diagnostics, test_modular); the plain grokking file the same path
    pytest.param("grokking_routed", marks=pytest.mark.extended),
    pytest.param("grokking", marks=pytest.mark.extended),
    # the text task again (toy_lm covers it under the service; test_text_models the GPT model)
    pytest.param("gpt", marks=pytest.mark.extended)])
def test_task_experiment_smoke_runs_end_to_end(tmp_path, shared_ray, name):
    path = smaller_grid(name, tmp_path)
    exp = experiment.load(str(path), smoke=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="offline", PYTHONUNBUFFERED="1",
               **({"RAY_AUTH_MODE": "token"} if shared_ray else {}))  # tiny_run.driver_env
    res = subprocess.run([sys.executable, "-m", "tuner.run", str(path), "--smoke", "--out",
                          str(tmp_path), *cluster_flags(shared_ray),
                          "--no-wandb"],  # W&B: test_service
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    root = tmp_path / exp.name
    trials = pd.read_csv(root / "report" / "trials.csv")
    search = trials[trials.stage == "search"]
    assert set(search.cell) == set(exp.cells())
    assert search.groupby("cell").size().eq(exp.search.trials_per_cell).all()
    finals = json.loads((root / "finals.json").read_text())
    assert sorted((r["cell"], r["seed"]) for r in finals) == sorted(
        (c, s) for c in exp.cells() for s in exp.finals.seeds)
    assert all(r["step"] == exp.max_t and not r["diverged"] for r in finals)
    task = TASKS[exp.base.task]
    assert all(f"eval/{m}" in r for r in finals for m in task.METRICS)
    assert not any(k.startswith("eval/score_t+") for r in finals for k in r)
    summary = (root / "report" / "summary.md").read_text()
    finals_table = summary.split("## Finals", 1)[1].splitlines()
    header = next(line for line in finals_table if line.startswith("| cell |"))
    assert header.split(" | ")[1:] == ["seeds ok/run", *task.REPORTED, "flag |"], header
    assert summary.count("**") >= 2 * len(exp.claims) and "## Verdict" in summary
    # the model's own metrics (routing) reach the finals, the diagnostics the report
    assert all(m in r for r in finals for m in routing.metric_names(exp.base.model))
    if exp.base.train.diagnostics_every:
        assert "## Diagnostics" in summary and (root / "report" / "diagnostics.png").exists()
