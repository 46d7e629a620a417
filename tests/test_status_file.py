"""status.json per cell (tuner.service.status): a shared finals program reports every cell's
seeds under member keys; each cell's value must be the mean over its own seeds, not the
program's plain metric (found on an H100: exp2's six cells all showed the 18 members' mean)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from tuner.service.objective import Objective
from tuner.service.status import StatusFile
from tuner.service.trial_spec import Worker, member_key, shared_final_spec


def _trial(config, result, status="RUNNING"):
    return types.SimpleNamespace(config=config, last_result=result, status=status)


def test_shared_finals_report_each_cells_own_seed_mean(tmp_path):
    members = [("a", 1e-3, 0), ("a", 1e-3, 1), ("b", 3e-3, 0), ("b", 3e-3, 1), ("b", 3e-3, 2)]
    values = [1.01, 1.03, 1.20, 1.22, 1.30]
    spec = shared_final_spec(members, {"a": {}, "b": {}}, Worker())
    result = {"step": 500, "eval/nmse": float(np.mean(values))}
    result |= {member_key(j, "eval/nmse"): v for j, v in enumerate(values)}
    status = StatusFile(tmp_path / "status.json", "finals", ["a", "b"], 1,
                        Objective("eval/nmse", "min"))
    status.write([_trial({"final": spec}, result)])
    cells = json.loads((tmp_path / "status.json").read_text())["cells"]
    assert cells["a"]["best_so_far"]["value"] == pytest.approx(np.mean(values[:2]), rel=1e-12)
    assert cells["b"]["best_so_far"]["value"] == pytest.approx(np.mean(values[2:]), rel=1e-12)
    assert cells["a"]["best_so_far"]["value"] != pytest.approx(result["eval/nmse"], rel=1e-3)
    assert cells["b"]["best_so_far"]["lr"] == 3e-3 and cells["a"]["running"] == 1


def test_a_population_reports_each_members_value(tmp_path):
    config = {"stage": "search", "wave": 0, "members": [
        {"cell": "a", "lr": 1e-3, "number": 0}, {"cell": "a", "lr": 1e-2, "number": 1},
        {"cell": "b", "lr": 1e-3, "number": 0}]}
    result = {"step": 10, "eval/nmse": 0.0, member_key(0, "eval/nmse"): 1.2,
              member_key(1, "eval/nmse"): 1.1, member_key(2, "eval/nmse"): float("nan")}
    status = StatusFile(tmp_path / "status.json", "search", ["a", "b"], 1,
                        Objective("eval/nmse", "min"))
    status.write([_trial(config, result)])
    cells = json.loads((tmp_path / "status.json").read_text())["cells"]
    assert cells["a"]["best_so_far"] == {"value": 1.1, "lr": 1e-2, "step": 10}
    assert cells["b"]["best_so_far"] is None  # no finite value yet
