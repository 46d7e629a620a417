"""What a resume reads back from an experiment folder, checked before Ray starts: a damaged
result file stops the driver with its name and remedy at once, a journal torn by a kill is
repaired (``journal_repair``), and a Tune snapshot cut by a kill is put back from the whole copy
the driver kept (``snapshot_copy``) or else set aside for the previous one, instead of failing
minutes later inside a Tune run, or (the snapshot) Tune training the stage again from step 0
under new trial ids after a "Restarting experiment" in its log."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tuner.service import snapshot_copy
from tuner.service.dirs import ExperimentDirs
from tuner.service.files import DamagedFile, read_json
from tuner.service.search.journal_repair import repair_torn_tail

SNAPSHOT = "experiment_state-*.json"  # Tune's run snapshots, one per driver session

REMEDY = {  # file name -> what to do where it is damaged
    "search_best.json": "delete it and rerun the same command: the finished search is read "
                        "back from its journals and Tune folder",
    "finals.json": "delete it and rerun the same command: the finals resume from their Tune "
                   "folder",
    "search_options.json": "restore it, or delete it and rerun with the --widen-edges and "
                           "--research flags given before",
    "pilot.json": "delete it, or measure again with --pilot",
}


def check(dirs: ExperimentDirs) -> list[str]:
    """Raises ``DamagedFile`` for a damaged JSON result file or journal; returns the messages
    of torn journal tails it repaired."""
    for name, remedy in REMEDY.items():
        if (dirs.root / name).exists():
            read_json(dirs.root / name, remedy)
    repaired = [repair_torn_tail(p) for p in sorted(dirs.studies.glob("**/*.journal"))]
    snapshots = {p.parent for p in dirs.root.rglob(SNAPSHOT)}
    for folder in sorted(snapshots):
        repaired += [*snapshot_copy.restore_cut(folder), tune_snapshot(folder)]
    return [m for m in repaired if m]


def _whole(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_bytes()), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def tune_snapshot(folder: Path) -> str | None:
    """Sets a cut newest snapshot of the Tune run in ``folder`` aside (as ``<name>.torn``), so
    that Tune resumes from the previous one (what Tune restores is the newest by name); the
    message to print, or None where the newest is whole.

    Raises:
        DamagedFile: the cut snapshot is the only one (file, remedy).
    """
    names = sorted(folder.glob(SNAPSHOT), reverse=True)
    if not names or _whole(names[0]):
        return None
    newest = names[0]
    previous = next((p for p in names[1:] if _whole(p)), None)
    if previous is None:
        raise DamagedFile(
            f"{newest} is cut (a kill while Tune wrote its snapshot) and the run in {folder} "
            "has no earlier whole one: Tune would train this stage again from step 0 under new "
            "trial ids. Restore the file from a copy, or delete the folder "
            f"{folder} to train the stage again knowingly, then rerun this command")
    aside = newest.with_name(newest.name + ".torn")
    os.replace(newest, aside)
    return (f"{newest} was cut (a kill while Tune wrote it): kept as {aside.name}; the run "
            f"resumes from the previous snapshot {previous.name} (trials continue from its "
            "checkpoints)")
