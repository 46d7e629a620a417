"""A moved (``mv``) or copied (``cp -r``) experiment folder resumes at its new place, to the same
results as a run that never moved, and writes nothing at its old place.

Tune pickles the driver's objects with absolute paths (the searchers' journal folder, the status
file, the W&B directory, each trial's compilation cache); :mod:`tuner.service.relocate`
re-points them. The default tests unpickle them as ``Tuner.restore`` does; ``-m extended`` runs
the real CLI: the tiny experiment killed mid-search, its folder moved or copied, the same
command at the new ``--out``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from tuner.service import relocate
from tuner.service.objective import Objective
from tuner.service.search.searcher import PerCellSearcher
from tuner.service.status import StatusFile
from tuner.service.trial_spec import Worker, search_template
from tuner.service.wandb_logging import make_callback


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder``: (size, mtime in ns) of files, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            st = os.lstat(Path(dirpath, name))
            out[str(Path(dirpath, name).relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def _driver_objects(root: Path) -> dict:
    """What ``tuner.pkl`` holds of ours for a folder at ``root``: a searcher with one told
    trial in its journal, the status callback and the W&B callback."""
    cache = Worker(str(root / "jax_cache"), 0.0)
    searcher = PerCellSearcher({"a": search_template({"x": 1}, cache)}, 3, 1e-4, 1e-1,
                               "eval/nmse", "min", "step", 60, root / "studies")
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"step": 60, "eval/nmse": 0.5})
    searcher.suggest("t1")  # asked, still running when the driver died
    status = StatusFile(root / "status.json", "search", ["a"], 3, Objective("eval/nmse", "min"))
    return {"searcher": searcher, "status": status,
            "wandb": make_callback("p", "tiny", root / "wandb")}


@pytest.mark.parametrize("how", ["mv", "cp"])
def test_pickles_resume_at_the_new_place(tmp_path, how):
    """Unpickled as a driver at the new place does (:func:`relocate.moved`, from what the
    folder recorded): the searcher reads its journals there (the told trial, the running one),
    hands out trials whose compilation cache is there, the status file and W&B directory are
    there, and nothing is made (``mv``) or changed (``cp -r``) at the old place."""
    old, new = tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"
    old.mkdir(parents=True)
    assert relocate.take(old) == ([], None)
    data = pickle.dumps(_driver_objects(old))
    new.parent.mkdir()
    if how == "mv":
        shutil.move(old, new)
    else:
        shutil.copytree(old, new, symlinks=True)
    before = listing(old.parent)

    earlier, came_from = relocate.take(new)
    assert (earlier, came_from) == ([old], old)
    with relocate.moved(earlier, new):
        objs = pickle.loads(data)
    searcher = objs["searcher"]
    frame = searcher.trials_dataframe()
    assert frame.state.tolist() == ["COMPLETE", "RUNNING"]  # the moved journal, not a new one
    searcher.on_trial_complete("t1", {"step": 60, "eval/nmse": 0.25})  # KeyError before
    config = searcher.suggest("t2")
    assert Worker.of(config).jax_cache_dir == str(new / "jax_cache")
    objs["status"].write([])
    assert (new / "status.json").exists()
    assert objs["wandb"].kwargs["dir"] == str(new / "wandb")
    assert sorted(p.name for p in (new / "studies").iterdir()) == ["a.journal"]
    assert listing(old.parent) == before  # nothing made or changed at the old place
    assert (old.exists()) == (how == "cp")


def test_a_trial_finds_its_cache_at_the_new_place(tmp_path):
    """A trial restored from Tune's snapshot carries the config it was made with: its cache
    under an earlier root of the folder is taken at the folder's current place; a cache named
    outside the folder (``--compile-cache``) stays where it is."""
    first, second, third = (tmp_path / d / "tiny" for d in "abc")
    for root in (first, second, third):
        root.mkdir(parents=True)
    relocate.take(first)
    shutil.copy(first / "locations.json", second)
    assert relocate.take(second) == ([first], first)
    shutil.copy(second / "locations.json", third)
    assert relocate.take(third) == ([first, second], second)  # moved twice
    for root in (first, second):
        assert relocate.in_folder(str(root / "jax_cache"), third) == str(third / "jax_cache")
    assert relocate.in_folder("/shared/cache", third) == "/shared/cache"
    assert relocate.in_folder(str(tmp_path / "a" / "tiny2"), third) == str(
        tmp_path / "a" / "tiny2")  # a sibling, not under the root
    assert relocate.in_folder(str(first / "jax_cache"), tmp_path) == str(first / "jax_cache")


# ----------------------------------------------------------------- the real CLI (minutes)


def _interrupted(out: Path, cluster) -> Path:
    """The tiny experiment at ``out`` SIGKILLed mid-search (a trial reported and not ended),
    with its compilation cache in its folder (the default). Returns the folder."""
    from test_service import finished_trials, trial_midway
    from tiny_run import cli, settle

    root = out / "tiny"
    out.mkdir(parents=True, exist_ok=True)
    proc = cli(out, "--compile-cache", str(root / "jax_cache"), start_new_session=True,
               log=out / "killed.log", cluster=cluster)
    deadline, waited = time.time() + 400, None
    def finished() -> int:
        try:
            return finished_trials(root)
        except KeyError:  # a journal made, its study's first record not yet written
            return 0

    while time.time() < deadline and proc.poll() is None:
        if finished() >= 4:
            waited = waited or time.time()
            if trial_midway(root, "search") or time.time() - waited > 30:
                break
        time.sleep(0.1)
    assert proc.poll() is None, (out / "killed.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=300)
    settle(cluster)
    assert not (root / "search_best.json").exists()
    return root


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, shared_ray) -> tuple[Path, Path]:
    """(where the killed run's folder lies, an exact copy of it kept aside): each test puts
    the copy back at the first place, then moves or copies it from there."""
    root = _interrupted(tmp_path_factory.mktemp("killed") / "out", shared_ray)
    kept = tmp_path_factory.mktemp("kept") / "tiny"
    subprocess.run(["cp", "-a", str(root), str(kept)], check=True)
    shutil.rmtree(root)
    return root, kept


def _finals(root: Path) -> pd.DataFrame:
    rows = pd.DataFrame(json.loads((root / "finals.json").read_text()))
    return rows.sort_values(["cell", "seed"]).reset_index(drop=True)


def _resume_at(new_out: Path, old: Path, reference: Path, cluster) -> str:
    """The same command at ``new_out`` (its default compilation cache, now in the new
    folder): exit 0, the moved folder named, the same trials, rungs, best rates and finals
    as the run that never stopped."""
    from test_service import check_finished_experiment, outcome
    from tiny_run import cli, finish

    root = new_out / "tiny"
    out = finish(cli(new_out, "--compile-cache", str(root / "jax_cache"), cluster=cluster))
    assert f"moved (or was copied) from {old}" in out
    assert "resuming the search" in out
    check_finished_experiment(root)
    assert outcome(root) == outcome(reference)
    ours, ref = _finals(root), _finals(reference)
    assert ours[["cell", "seed", "lr", "step"]].equals(ref[["cell", "seed", "lr", "step"]])
    for metric in ("eval/nmse", "train_loss"):  # the same programs on this CPU: float32 noise
        assert ours[metric].to_numpy() == pytest.approx(ref[metric].to_numpy(), rel=1e-4)
    assert any((root / "jax_cache").iterdir())
    return out


@pytest.mark.extended
def test_a_moved_folder_resumes_at_its_new_place(interrupted, tiny_reference, shared_ray,
                                                 tmp_path):
    """``mv`` to a new ``--out``: the rerun resumes there and makes nothing at the old place
    (before, it made empty journals there and stopped on a KeyError)."""
    old, kept = interrupted
    subprocess.run(["cp", "-a", str(kept), str(old)], check=True)
    new_out = tmp_path / "moved"
    new_out.mkdir()
    subprocess.run(["mv", str(old), str(new_out)], check=True)
    _resume_at(new_out, old, tiny_reference[0], shared_ray)
    assert not old.exists()


@pytest.mark.extended
def test_a_copied_folder_resumes_without_touching_the_original(interrupted, tiny_reference,
                                                               shared_ray, tmp_path):
    """``cp -r`` to a new ``--out``, the original made unwritable: the copy resumes to the
    reference and nothing under the original changes (checked by listing: tests run as root,
    whom ``chmod`` does not stop)."""
    old, kept = interrupted
    subprocess.run(["cp", "-a", str(kept), str(old)], check=True)
    new_out = tmp_path / "copied"
    new_out.mkdir()
    subprocess.run(["cp", "-r", str(old), str(new_out)], check=True)
    subprocess.run(["chmod", "-R", "a-w", str(old)], check=True)
    before = listing(old)
    try:
        _resume_at(new_out, old, tiny_reference[0], shared_ray)
        assert listing(old) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(old)], check=True)
        shutil.rmtree(old)
