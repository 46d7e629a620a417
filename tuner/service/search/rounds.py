"""Which search rounds an experiment runs, recorded in its folder so that every rerun runs the same.

Round ``search`` covers every cell over the file's range. Two options add rounds:

- ``--widen-edges``: cells whose best rate sits at an edge of the range (or whose trials all
  diverged) get a round over a range shifted outward by half a span.
- ``--research CELL:LOW:HIGH``: the named cell gets a round over the new range; the other cells
  keep their trials (one cell's range was wrong, the rest of a long grid is fine).

Both are written to ``search_options.json`` by the first run that names them, so a rerun without
the flags (e.g. after a kill) resumes those rounds instead of dropping them, and a finished
search is reopened only for rounds it does not yet hold: finished rounds are read back from
their Tune folders, never retrained. A cell's best rate is the best full-budget trial over all
of its rounds (every trial trains the same seed on the same system, so they compare directly).
No Ray import: the CLI checks ``--research`` before any cluster work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tuner.service.files import read_json, write_json
from tuner.service.folder_check import REMEDY


@dataclasses.dataclass(frozen=True)
class SearchRound:
    """One Tune run of stage 1: the cells it searches, its LR range and where its studies live."""

    name: str  # Tune experiment folder under the experiment root
    cells: dict[str, dict[str, Any]]  # cell id -> grid overrides
    lr_low: float
    lr_high: float
    study_dir: Path


@dataclasses.dataclass(frozen=True)
class Research:
    """``--research CELL:LOW:HIGH``: search one cell again over a new log-uniform range."""

    cell: str
    lr_low: float
    lr_high: float


def parse_research(text: str, cells: Sequence[str]) -> Research:
    """``CELL:LOW:HIGH`` -> :class:`Research`; ValueError naming the part and what is allowed.

    Cell ids never hold ``:`` (``tuner.service.experiment.cell_id``), so the last two
    colons split the text.
    """
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        raise ValueError(f"--research {text}: expected CELL:LOW:HIGH, e.g. "
                         f"{cells[0] if cells else 'CELL'}:1e-4:1e-3")
    cell, low, high = parts
    if cell not in cells:
        raise ValueError(f"--research {text}: no cell {cell!r}; allowed: {', '.join(cells)}")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        raise ValueError(f"--research {text}: LOW and HIGH must be numbers, e.g. 1e-4:1e-3"
                         ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"--research {text}: the range must satisfy 0 < LOW < HIGH, finite")
    return Research(cell, lo, hi)


@dataclasses.dataclass
class SearchOptions:
    """The experiment's recorded search options and which of their rounds the result holds."""

    widen_edges: bool = False
    widened: bool = False  # search_best.json includes the wider rounds
    researches: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # in asked order
    researched: list[str] = dataclasses.field(default_factory=list)  # rounds in search_best

    @property
    def pending(self) -> bool:
        """Whether search_best.json lacks a round these options ask for."""
        return ((self.widen_edges and not self.widened)
                or any(r["name"] not in self.researched for r in self.researches))

    def research_rounds(self, cells: dict[str, dict[str, Any]],
                        studies: Callable[[str], Path]
                        ) -> list[SearchRound]:
        return [SearchRound(r["name"], {c: cells[c] for c in r["cells"]}, r["lr_low"],
                            r["lr_high"], studies(r["name"])) for r in self.researches]

    def completed(self) -> SearchOptions:
        """These options once search_best.json holds every round they ask for."""
        return dataclasses.replace(self, widened=self.widen_edges,
                                   researched=[r["name"] for r in self.researches])

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))


def record(path: Path, widen_edges: bool = False, researches: Iterable[Research] = ()
           ) -> SearchOptions:
    """The saved options with this run's flags added, saved again if they changed.

    ``--widen-edges`` once given stays on. A research already recorded (same cell, same range)
    is the same round, so rerunning the command that asked for it resumes it; new ones asked
    together with the same range share one round (their trials run side by side).
    """
    saved = read_json(path, REMEDY[path.name]) if path.exists() else {}
    known = {f.name for f in dataclasses.fields(SearchOptions)}
    options = SearchOptions(**{k: v for k, v in saved.items() if k in known})
    options.widen_edges = bool(widen_edges or options.widen_edges)
    done = {(c, r["lr_low"], r["lr_high"]) for r in options.researches for c in r["cells"]}
    new: dict[tuple[float, float], list[str]] = {}
    for r in researches:
        if (r.cell, r.lr_low, r.lr_high) not in done:
            cells = new.setdefault((r.lr_low, r.lr_high), [])
            if r.cell not in cells:
                cells.append(r.cell)
    for (lo, hi), cells in new.items():
        name = f"search_research_{len(options.researches) + 1}"
        options.researches.append({"name": name, "cells": cells, "lr_low": lo, "lr_high": hi})
    if dataclasses.asdict(options) != saved:
        options.save(path)
    return options
