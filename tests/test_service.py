"""The whole service as users run it: ``python -m tuner.run`` on a real local Ray cluster, real
Optuna studies, W&B offline writing real run files, and a driver killed with SIGKILL and rerun.

Each test runs the CLI in a subprocess on ``tests/fixtures/tiny.yaml`` (two cells, a learning-
rate range that reaches diverging rates, so COMPLETE, PRUNED and diverged trials all occur).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

TINY = Path(__file__).parent / "fixtures" / "tiny.yaml"
CELLS = ["patch=1", "patch=4"]
TRIALS_PER_CELL = 10

pytestmark = pytest.mark.slow


def cli(out: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tuner.run", str(TINY), "--out", str(out),
                             "--num-cpus", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, **kw)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out


def studies(root: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out = {}
    for cell in CELLS:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(root / "studies" / f"{cell}.journal")))
        out[cell] = optuna.load_study(study_name=cell, storage=storage).trials
    return out


def check_finished_experiment(root: Path) -> pd.DataFrame:
    """What every finished run must satisfy; returns the report's trial table."""
    per_cell = studies(root)
    best = json.loads((root / "search_best.json").read_text())
    for cell, trials in per_cell.items():
        assert len(trials) == TRIALS_PER_CELL, (cell, [t.state for t in trials])
        numbers = [t.number for t in trials]
        assert len(set(numbers)) == len(numbers)
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        assert complete, cell
        # the best lr comes from a full-budget, finite trial
        chosen = min(complete, key=lambda t: t.value)
        assert best[cell]["lr"] == pytest.approx(chosen.params["lr"])
    report = pd.read_csv(root / "report" / "trials.csv")
    search = report[report.stage == "search"]
    assert not search.duplicated(["cell", "number"]).any()
    assert len(search) == TRIALS_PER_CELL * len(CELLS)
    finals = json.loads((root / "finals.json").read_text())
    for cell in CELLS:
        rows = [r for r in finals if r["cell"] == cell]
        assert sorted(r["seed"] for r in rows) == [0, 1]
        assert all(r["step"] == 60 and not r["diverged"] for r in rows)
        assert all("eval/score_t+16" in r for r in rows)
    summary = (root / "report" / "summary.md").read_text()
    assert "## Verdict" in summary and "nmse grows with the patch size" in summary
    assert (root / "report" / "claim1.png").stat().st_size > 0
    return report


def test_smoke_grid_end_to_end(tmp_path):
    out = finish(cli(tmp_path))
    root = tmp_path / "tiny"
    check_finished_experiment(root)
    states = {cell: {t.state.name for t in trials} for cell, trials in studies(root).items()}
    assert all({"COMPLETE", "PRUNED"} <= s for s in states.values()), states
    # diverging rates were tried, told PRUNED with a NaN (marked diverged), and never chosen
    diverged = [t for trials in studies(root).values() for t in trials
                if t.user_attrs.get("diverged")]
    assert diverged and all(t.params["lr"] > 100 and t.state.name == "PRUNED" and
                            math.isnan(max(t.intermediate_values.items())[1]) for t in diverged)
    best = json.loads((root / "search_best.json").read_text())
    assert all(b["lr"] < 100 for b in best.values())
    # W&B offline: one real run folder per trial (search + finals), with its data file
    runs = list((root / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == TRIALS_PER_CELL * len(CELLS) + len(CELLS)  # finals: one run per cell
    assert all(list(r.glob("*.wandb")) for r in runs)
    assert "Ray dashboard: 127.0.0.1" in out or "Ray dashboard: http://127.0.0.1" in out
    status = json.loads((root / "status.json").read_text())
    assert status["stage"] == "finals" and status["cells_done"] == len(CELLS)
    # a finished experiment is not rerun
    again = finish(cli(tmp_path))
    assert "resuming" not in again and "report:" in again


def test_sigkill_mid_search_then_rerun_loses_and_repeats_nothing(tmp_path):
    proc = cli(tmp_path, start_new_session=True)
    root = tmp_path / "tiny"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once some trials have finished, mid-search
        done = 0
        if (root / "studies").exists():
            done = sum(t.state.is_finished() for ts in studies(root).values() for t in ts)
        if done >= 4:
            break
        time.sleep(1)
    assert done >= 4 and not (root / "search_best.json").exists()
    os.kill(proc.pid, signal.SIGKILL)  # the driver only; Ray's own processes go with it
    proc.wait()
    before = {cell: [t for t in trials if t.state.is_finished()]
              for cell, trials in studies(root).items()}

    out = finish(cli(tmp_path))
    assert "resuming the search" in out
    report = check_finished_experiment(root)
    after = studies(root)
    for cell, trials in before.items():  # nothing finished before the kill was redone
        by_number = {t.number: t for t in after[cell]}
        for t in trials:
            assert by_number[t.number].state == t.state
            assert by_number[t.number].params == t.params
    # ASHA rungs survived the restore: every trial that reached step 20 is recorded there
    from tuner.service import experiment
    from tuner.service.dirs import ExperimentDirs
    from tuner.service.stages import build_search

    exp = experiment.load(str(TINY))
    searcher, scheduler = build_search(exp, ExperimentDirs(root))
    searcher.restore_from_dir(str(root / "search"))
    rungs = scheduler.rungs()
    for cell, trials in after.items():
        reached = sum(1 for t in trials if math.isfinite(t.intermediate_values.get(20, math.nan)))
        recorded = dict(rungs[cell]).get(20, 0)
        assert recorded == reached, (cell, rungs[cell], reached)
    assert not report.duplicated(["stage", "cell", "number", "seed"]).any()
