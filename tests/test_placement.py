"""Where the stage plan puts trials on a real local Ray cluster of N logical GPUs (N = 1, 2, 8):
from the ``CUDA_VISIBLE_DEVICES`` each trial saw, the trials of a stage use min(N, programs)
distinct GPUs and no GPU holds two trials while another is idle (Ray places fractional GPUs
first-fit, so this is the plan's doing: tuner/service/plan/programs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_run import cli, finish

from tuner.service.trials import GPUS_KEY

SHARE = Path(__file__).parent / "fixtures" / "tinyshare.yaml"
pytestmark = pytest.mark.slow


def _trials(run_dir: Path) -> list[tuple[str, float, float]]:
    """(GPU ids, start, end) of every trial of a Tune run, from its result.json."""
    out = []
    for result in sorted(run_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            start = rows[0]["timestamp"] - rows[0]["time_total_s"]
            out.append((rows[0][GPUS_KEY], start, rows[-1]["timestamp"]))
    return out


def _never_piled(trials: list[tuple[str, float, float]], n_gpus: int) -> None:
    for gpus, start, _ in trials:
        running = [g for g, s, e in trials if s <= start + 1e-3 and e > start]
        per_gpu = {str(i): sum(g == str(i) for g in running) for i in range(n_gpus)}
        if max(per_gpu.values()) > 1:
            assert min(per_gpu.values()) >= 1, (gpus, start, per_gpu)


# `-m extended` (minutes each, a Ray cluster of N logical GPUs and fresh trial workers):
# N = 8 (spread: four programs on four of eight cards), 1 (two programs packed on one card)
# and 2; tests/test_plan.py checks the rule for every N against Ray's first-fit placement in
# seconds in CI
@pytest.mark.extended
@pytest.mark.parametrize("n_gpus", [1, 2, 8])
def test_trials_spread_over_the_gpus_before_they_share_one(tmp_path, n_gpus):
    finish(cli(tmp_path, "--num-gpus", str(n_gpus), "--no-wandb", experiment=SHARE))
    root = tmp_path / "tinyshare"
    plan = json.loads((root / "plan.json").read_text())["stages"]
    for stage, run_dir in (("search", root / "search"), ("finals", root / "finals")):
        programs = len(plan[stage]["programs"])
        # at least one program per GPU where the grid allows: 2 shapes of 2 cells
        assert programs == min(4, max(2, n_gpus)), plan[stage]
        trials = _trials(run_dir)
        used = {g for g, _, _ in trials}
        assert all(g and "," not in g for g in used)  # one GPU each, fractional or whole
        assert len(used) == min(n_gpus, programs), (stage, used)
        _never_piled(trials, n_gpus)
    # packing only where programs outnumber the GPUs twice over: two shapes on one GPU
    assert (plan["search"]["gpu_share"] < 1) == (n_gpus == 1)
