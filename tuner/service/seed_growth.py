"""The one change a started experiment accepts: more finals seeds.

An experiment folder keeps a frozen copy of its file (``experiment.yaml``); resuming with a
changed file would mix two experiments, except when the only change is that ``finals.seeds``
grew (new seeds added, every old one kept): the finals already run stay valid, and the new
seeds are more replicates of the same cells (``stages.run_finals`` trains only them).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tuner.service import experiment
from tuner.service.experiment.lines import Lines


def _seeds_path(data: dict, smoke: bool) -> tuple[str, ...]:
    """Where the seeds the run uses are written: the smoke profile's own, else the file's."""
    smoke_finals = (data.get("smoke") or {}).get("finals") or {}
    return ("smoke", "finals", "seeds") if smoke and "seeds" in smoke_finals else (
        "finals", "seeds")


def _without(data: dict, path: tuple[str, ...]) -> dict:
    out = copy.deepcopy(data)
    node: Any = out
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)
    return out


def accepted(frozen: Path, new: Path, smoke: bool) -> tuple[int, ...] | None:
    """The seeds added when ``new`` differs from ``frozen`` only by grown finals seeds (of the
    profile the run uses), else None. Both files must load (the frozen one did once)."""
    try:
        old_exp = experiment.load(str(frozen), smoke=smoke)
        new_exp = experiment.load(str(new), smoke=smoke)
        old_data, new_data = (Lines(p.read_text(), p).data for p in (frozen, new))
    except experiment.SearchSpaceError:
        return None
    if not isinstance(old_data, dict) or not isinstance(new_data, dict):
        return None
    path = _seeds_path(new_data, smoke)
    if path != _seeds_path(old_data, smoke):
        return None
    if _without(old_data, path) != _without(new_data, path):
        return None
    old, grown = old_exp.finals.seeds, new_exp.finals.seeds
    if not set(old) < set(grown):
        return None
    return tuple(s for s in grown if s not in old)
