"""Bad experiment input fails early with file, line, field and the allowed values, and the CLI
starts nothing (no Ray, no experiment folder) when it does."""

import subprocess
import sys
from pathlib import Path

import pytest

from tuner import search_space

GOOD = (search_space.SEARCH_SPACES / "exp4.yaml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def line_of(text: str, line_text: str) -> int:
    """1-based number of the first line that starts with ``line_text`` (blanks ignored)."""
    return next(i for i, line in enumerate(text.splitlines(), 1)
                if line.strip().startswith(line_text.strip()))


@pytest.mark.parametrize("old,new,field,allowed", [
    ("  data.lambda_val: 0.96", "  data.lambda_val: 1.5", "fixed.data.lambda_val", "(0, 1)"),
    ("  data.structure: dense", "  data.structure: banded", "fixed.data.structure", "diagonal"),
    ("  model.patch_size: [1, 4, 16]", "  model.patch_size: [1, 3]", "grid.model.patch_size",
     "allowed: 1, 2, 4, 8, 16, 32"),
    ("  data.dim_y: [1, 2, 4, 8]", "  data.dim_y: [1, 128]", "grid.data.dim_y", "dim_x=64"),
    ("  metric: eval/nmse", "  metric: accuracy", "asha.metric", "eval/skill"),
    ("  seeds: [0, 1, 2]", "  seeds: [0]", "finals.seeds", "at least 2"),
    ("  lr_high: 3.0e-3", "  lr_high: 1.0e-6", "search.lr_high", "> lr_low"),
    ("  train.batch_size: 64", "  train.batch_sise: 64", "fixed.train.batch_sise",
     "batch_size"),
    ("  reduction_factor: 3", "  reduction_factor: 3\n  brackets: 2", "asha.brackets",
     "grace_period"),
])
def test_bad_field_names_file_line_field_and_allowed(tmp_path, old, new, field, allowed):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(search_space.SearchSpaceError) as err:
        search_space.load(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line_of(text, new.splitlines()[-1])}: {field}:"), msg
    assert allowed in msg


def test_smoke_override_errors_point_into_the_smoke_section(tmp_path):
    text = GOOD.replace("    train.steps: 60", "    train.steps: 50")  # not a multiple of 20
    path = write(tmp_path, text)
    search_space.load(str(path))  # the full profile is fine
    with pytest.raises(search_space.SearchSpaceError, match=rf"bad.yaml:"
                       rf"{line_of(text, 'train.steps: 50')}: smoke.fixed.train.steps"):
        search_space.load(str(path), smoke=True)


def test_malformed_yaml_and_unknown_experiment(tmp_path):
    path = write(tmp_path, "name: x\ngrid: [unclosed\n")
    with pytest.raises(search_space.SearchSpaceError, match=r"bad.yaml:\d+: not valid YAML"):
        search_space.load(str(path))
    with pytest.raises(search_space.SearchSpaceError, match=r"unknown experiment 'exp9'.*exp1, "
                       r"exp2, exp3, exp4"):
        search_space.load("exp9")


def test_every_shipped_experiment_loads_and_smoke_is_small():
    for name in search_space.known():
        full, smoke = search_space.load(name), search_space.load(name, smoke=True)
        assert full.cells().keys() == smoke.cells().keys()  # smoke searches every cell
        assert smoke.base.train.steps <= 100 and len(smoke.seeds) >= 2
        assert smoke.gpus_per_trial == 0


@pytest.mark.parametrize("args,message", [
    (["exp9"], "unknown experiment 'exp9'"),
    (["BAD", "--smoke"], "fixed.data.lambda_val"),
])
def test_cli_rejects_bad_input_before_ray(tmp_path, args, message):
    if args[0] == "BAD":
        args[0] = str(write(tmp_path, GOOD.replace("data.lambda_val: 0.96",
                                                   "data.lambda_val: 1.5")))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "tuner.run", *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Ray" not in res.stdout + res.stderr.replace(message, "")  # nothing started
    assert not out.exists()
