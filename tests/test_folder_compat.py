"""An experiment folder written by an earlier version (``tests/fixtures/folder-v0.tar.gz``: the
tiny experiment run by the code at commit 0ec902b, before the typed spine, and SIGKILLed
after 5 finished search trials) is read and resumed by this version.

What a folder pickles changed shape since: the status callback kept ``metric`` and ``mode``
apart (now one ``Objective``; :meth:`tuner.service.status.StatusFile.__setstate__` migrates
it); the searchers gained their results mixin and read trial configs through
``tuner.service.trial_spec``. The default test unpickles what ``Tuner.restore`` unpickles and
uses it as the resumed driver would; ``-m extended`` resumes the folder to the end.

A folder holds absolute paths (Tune's callbacks, the searcher's journals, the workers'
compilation cache), as it did when it was made, so the archive is unpacked where it was
written: ``/tmp/lds-tuner-compat``.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "folder-v0.tar.gz"
WHERE = Path("/tmp/lds-tuner-compat")  # where the fixture's folder was written
ROOT = WHERE / "tiny"
FINISHED_AT_KILL = 5


@pytest.fixture
def old_folder() -> Path:
    shutil.rmtree(WHERE, ignore_errors=True)
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(WHERE.parent, filter="tar")  # W&B links its logs by absolute path
    yield ROOT
    shutil.rmtree(WHERE, ignore_errors=True)


def _finished(root: Path) -> dict[str, int]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out = {}
    for journal in sorted((root / "studies").glob("*.journal")):
        storage = JournalStorage(JournalFileBackend(str(journal)))
        study = optuna.load_study(study_name=journal.stem, storage=storage)
        out[journal.stem] = sum(t.state.is_finished() for t in study.trials)
    return out


def test_the_pickled_driver_state_loads_and_works(old_folder):
    """What ``Tuner.restore`` unpickles from ``search/tuner.pkl`` (the searcher, the scheduler,
    the status callback) loads in this version and does its job on the old folder."""
    from tuner.service import experiment
    from tuner.service.search.searcher import PerCellSearcher
    from tuner.service.status import StatusFile
    from tuner.view import load as view

    assert sum(_finished(old_folder).values()) >= FINISHED_AT_KILL
    exp = experiment.load(str(old_folder / "experiment.yaml"))  # the frozen file loads
    state = pickle.loads((old_folder / "search" / "tuner.pkl").read_bytes())
    searcher = state["_tune_config"].search_alg
    assert isinstance(searcher, PerCellSearcher)
    searcher.restore_from_dir(str(old_folder / "search"))
    frame = searcher.trials_dataframe()
    finished = frame[frame.state.isin(["COMPLETE", "PRUNED", "FAIL"])]
    assert finished.groupby("cell").size().to_dict() == {
        c: n for c, n in _finished(old_folder).items() if n}
    assert set(searcher.best_per_cell()) == set(exp.cells())
    # the next trial it hands out is in this version's form, read by this version's readers
    from tuner.service.trial_spec import TrialSpec, Worker

    config = searcher.suggest("new-trial")
    spec = TrialSpec.of(config)
    assert spec.stage == "search" and spec.cells[0] in exp.cells()
    assert exp.search.lr_low <= spec.members[0].lr <= exp.search.lr_high
    assert Worker.of(config).jax_cache_dir == str(old_folder / "jax_cache")

    status = next(c for c in state["_run_config"].callbacks if isinstance(c, StatusFile))
    assert status.objective == exp.objective  # migrated from the old metric and mode
    status.write([])
    written = json.loads((old_folder / "status.json").read_text())
    assert written["metric"] == exp.asha.metric and written["cells_total"] == len(exp.cells())

    # W&B's callback, pickled before it kept the search's full budget, reads its members'
    # budget from their configs (the resumed driver replays ended trials with it at its first
    # step: AttributeError there before)
    from tuner.service.wandb_logging import CellWandbCallback

    wandb_cb = next(c for c in state["_run_config"].callbacks
                    if isinstance(c, CellWandbCallback))
    assert wandb_cb._max_t is None

    # the viewer reads the old folder's trials from its journals (the search has not ended)
    rows = view.search_trials(view.open_folder(old_folder))
    assert len(rows) == len(frame)


@pytest.mark.extended
def test_an_old_folder_resumes_to_the_reference(old_folder, tiny_reference):
    """The same command, run by this version on the old folder, resumes the search and ends
    with the uninterrupted reference's trials and best rates."""
    from test_service import check_finished_experiment, outcome
    from tiny_run import cli, finish

    out = finish(cli(WHERE))
    assert "resuming the search" in out
    check_finished_experiment(old_folder)
    assert outcome(old_folder) == outcome(tiny_reference[0])
