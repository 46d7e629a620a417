"""Experiment folders and their raw files for the viewer: which folders are experiments, a
cache of parsed files re-read only when they change, and the few files read as they are
(``status.json``; JSON lines of a running trial; an Optuna journal, read-only).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from data.registry import TASKS, metric_mode
from tuner.service import experiment
from tuner.service.dirs import ExperimentDirs


class NotAnExperiment(ValueError):
    """A path that is not an experiment folder (nor a folder of them); the message names it."""


class FileCache:
    """Parsed files keyed by path, re-read only when their size or mtime changed.

    Polling a running experiment every few seconds then costs one ``stat`` per file; each viewer
    session owns one (no module-level state).
    """

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int], Any]] = {}
        self.version = 0  # bumped at every (re-)parse: a changed file means a redraw

    def get(self, path: Path, parse) -> Any:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        hit = self._seen.get(path)
        if hit is None or hit[0] != key:
            hit = (key, parse(path))
            self._seen[path] = hit
            self.version += 1
        return hit[1]


@dataclasses.dataclass
class Folder:
    """One experiment folder and its (validated) experiment file.

    Attributes:
        root: The folder ``tuner.run`` wrote (``<out>/<name>[-smoke]``).
        exp: Its ``experiment.yaml`` loaded by the service's own loader (cells, claims, metric).
        cache: Parsed files of this folder.
        label: How the page names it (the folder's name; with its parent's where two of the
            folders shown share a name).
    """

    root: Path
    exp: experiment.Experiment
    cache: FileCache = dataclasses.field(default_factory=FileCache)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.root.name

    @property
    def dirs(self) -> ExperimentDirs:
        return ExperimentDirs(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def curve(self) -> dict[str, Any] | None:
        """The task's curve after training (the LDS rollouts), as the report draws it."""
        return getattr(TASKS[self.exp.base.task], "CURVE", None)

    def mode(self, metric: str) -> str:
        return metric_mode(self.exp.base.task, metric)


def open_folder(path: str | Path) -> Folder:
    """The experiment folder at ``path``; :class:`NotAnExperiment` if it is not one.

    The folder's ``experiment.yaml`` is the copy taken when the run started; ``--smoke`` is
    not recorded, so it is read as the profile whose name is the folder's name.
    """
    root = Path(path).absolute()
    frozen = ExperimentDirs(root).experiment_file
    if not frozen.is_file():
        raise NotAnExperiment(f"{path}: not an experiment folder (no experiment.yaml; give a "
                              "folder that `python -m tuner.run` wrote, or one holding such)")
    try:
        exp = experiment.load(str(frozen))
        if exp.name != root.name and root.name.endswith("-smoke"):
            exp = experiment.load(str(frozen), smoke=True)
    except experiment.SearchSpaceError as e:
        raise NotAnExperiment(f"{path}: its experiment.yaml does not load: {e}") from None
    return Folder(root, exp)


def find_folders(paths: list[str | Path]) -> list[Folder]:
    """Every experiment folder named, or directly inside a folder named (``experiments/``)."""
    out = []
    for path in paths:
        p = Path(path)
        if not p.is_dir():
            raise NotAnExperiment(f"{path}: no such folder")
        if ExperimentDirs(p).experiment_file.is_file():
            out.append(open_folder(p))
            continue
        inside = sorted(d for d in p.iterdir() if ExperimentDirs(d).experiment_file.is_file())
        if not inside:
            raise NotAnExperiment(f"{path}: no experiment folder here (none of it or its "
                                  "subfolders holds the experiment.yaml that tuner.run writes)")
        out += [open_folder(d) for d in inside]
    names = [f.name for f in out]
    for f in out:
        if names.count(f.name) > 1:
            f.label = f"{f.root.parent.name}/{f.name}"
    return out


# ------------------------------------------------------------------------------ raw files
def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line a running trial is writing
            continue
    return rows


def journal_trials(path: Path) -> list[Any]:
    """The trials of the one study in an Optuna journal, read-only."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(path)))
    return [t for s in storage.get_all_studies()
            for t in optuna.load_study(study_name=s.study_name, storage=storage)
            .get_trials(deepcopy=False)]


def status(folder: Folder) -> dict[str, Any] | None:
    """``status.json`` (live progress of the running stage), None before the first trial."""
    return folder.cache.get(folder.dirs.status, read_json)


def stage(folder: Folder) -> str:
    """Where the experiment stands, from which result files exist."""
    dirs = folder.dirs
    if dirs.summary.exists():
        return "done"
    if dirs.finals.exists():
        return "finals done, report pending"
    if dirs.best.exists():
        return "finals" if dirs.finals_runs.exists() else "search done"
    if dirs.round_runs("search").exists():
        return "search"
    return "not started"


def trial_folders(folder: Folder, rounds: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(round, trial folder) of every Tune trial of ``rounds`` that has written its config."""
    return [(rnd, p.parent) for rnd in rounds
            for p in sorted((folder.root / rnd).glob("*/params.json"))]
