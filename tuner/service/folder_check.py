"""What a resume reads back from an experiment folder, checked before Ray starts: a damaged
result file stops the driver with its name and remedy at once, and a journal torn by a kill is
repaired (``journal_repair``), instead of either failing minutes later inside a Tune run."""

from __future__ import annotations

from tuner.service.dirs import ExperimentDirs
from tuner.service.files import read_json
from tuner.service.search.journal_repair import repair_torn_tail

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
    return [m for m in repaired if m]
