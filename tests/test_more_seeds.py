"""More finals seeds on a finished experiment (issue 26): growing ``finals.seeds`` is the one
change a started experiment accepts; only the new seeds train, the old finals are kept, the
report is rewritten. Any other change is still refused, before Ray starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny_run import TINY, cli, finish

from tuner.service.cli import Args, UsageError, freeze, prepare
from tuner.service.trial_spec import TrialSpec

SEEDS = "  seeds: [0, 1]"


def grown(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiny.yaml"  # the same experiment name (tiny) as the fixture
    path.write_text(text)
    return path


def _prepare(tmp_path: Path, text: str):
    return prepare(Args(str(grown(tmp_path, text)), out=str(tmp_path / "out"), wandb=False))


@pytest.mark.parametrize("old,new", [
    ("name: tiny", "name: tiny  # a comment"),  # the text changed, not the seeds
    (SEEDS, "  seeds: [0, 2]"),  # seed 1 dropped
    (SEEDS, "  seeds: [1, 0]"),  # reordered: no seed added
    (SEEDS, "  seeds: [0, 1, 2]\n# plus:\n  # x"),  # fine so far; the line below adds more
])
def test_changes_other_than_grown_seeds_are_refused(tmp_path, old, new):
    """The old refusal stands for every change but grown seeds, also a change that comes
    together with grown seeds (here the budget); the frozen copy stays as it was."""
    frozen = tmp_path / "out" / "tiny" / "experiment.yaml"
    frozen.parent.mkdir(parents=True)
    shutil.copyfile(TINY, frozen)
    text = TINY.read_text().replace(old, new)
    if "# plus" in new:
        text = text.replace("  train.steps: 60", "  train.steps: 80")
    with pytest.raises(UsageError, match="changed since .* more finals seeds"):
        _prepare(tmp_path, text)
    assert frozen.read_text() == TINY.read_text()


def test_grown_seeds_are_accepted_and_frozen(tmp_path, capsys):
    frozen = tmp_path / "out" / "tiny" / "experiment.yaml"
    frozen.parent.mkdir(parents=True)
    shutil.copyfile(TINY, frozen)
    text = TINY.read_text().replace(SEEDS, "  seeds: [0, 1, 5, 3]  # two more")
    exp, dirs, _ = _prepare(tmp_path, text)
    assert frozen.read_text() == TINY.read_text()  # nothing written before the lock is held
    freeze(exp, dirs, smoke=False)
    assert exp.finals.seeds == (0, 1, 5, 3) and frozen.read_text() == text
    assert "finals.seeds grew by [5, 3]" in capsys.readouterr().out


def rows_of(root: Path) -> list[dict]:
    return json.loads((root / "finals.json").read_text())


@pytest.mark.slow
def test_added_seeds_train_alone_and_join_the_report(tiny_reference, shared_ray, tmp_path):
    """A copy of the finished tiny experiment, its file's seeds grown from [0, 1] to [0, 1, 2]:
    the rerun trains one Tune trial per cell with seed 2 only (its own system), in its own
    folder, keeps every old row as it was, and rewrites the report with three seeds."""
    root = tmp_path / "tiny"
    shutil.copytree(tiny_reference[0], root)
    before = rows_of(root)
    summary_before = (root / "report" / "summary.md").read_text()
    path = grown(tmp_path, TINY.read_text().replace(SEEDS, "  seeds: [0, 1, 2]"))
    # W&B: tests/test_service.py
    out = finish(cli(tmp_path, "--no-wandb", experiment=path, cluster=shared_ray))
    assert "finals.seeds grew by [2]" in out and "report:" in out
    assert "resuming the search" not in out  # the search is finished: not reopened
    after = rows_of(root)
    assert after[:len(before)] == before  # old rows identical, in order
    new = after[len(before):]
    assert sorted((r["cell"], r["seed"]) for r in new) == [("patch=1", 2), ("patch=4", 2)]
    assert all(r["step"] == 60 and not r["diverged"] for r in new)
    # seed 2 trained on its own system (data.system_seed = 2 + 1 + seed), not seed 0's or 1's
    assert {r["system_seed"] for r in new} == {5}
    assert {r["system_seed"] for r in before} == {3, 4}
    trials = list((root / "finals-seeds-2").glob("*/result.json"))
    assert len(trials) == 2  # one per cell (patch 1 and 4 compile to two programs)
    for f in trials:
        spec = TrialSpec.of(json.loads(f.read_text().splitlines()[-1])["config"])
        assert spec.seeds == (2,) and len(spec.cells) == 1
    assert len(list((root / "finals").glob("*/result.json"))) == 2  # the old run untouched
    summary = (root / "report" / "summary.md").read_text()
    assert summary != summary_before and "[0, 1, 2]" in summary
    assert "| patch=1 | 3/3 |" in summary and "| patch=4 | 3/3 |" in summary
    # nothing left to do: the same command finds the experiment finished
    again = finish(cli(tmp_path, "--no-wandb", experiment=path, cluster=shared_ray))
    assert "finals of the added seeds" not in again and rows_of(root) == after
