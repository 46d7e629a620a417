"""What one Tune trial trains, read from its config by one function (:meth:`TrialSpec.of`).

A trial's config is a plain dict (Tune stores it in ``params.json`` and hands it to the
trainable), written by the searchers and the finals in three forms: a search trial
``{"cell", "lr", ...}``, a population ``{"members": [{"cell", "number", "lr"}, ...], ...}``
and a finals trial ``{"final": {"cell", "lr", "seeds", ...}}``. Everything that reads a trial
(status file, W&B tags, viewer, report) goes through :meth:`TrialSpec.of`, so no reader
knows the three forms.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Member:
    """One learning rate of a trial: its cell, Optuna trial number (None for finals) and rate."""

    cell: str
    lr: float
    number: int | None = None


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """A trial's stage ("search", "final" or "pilot"), its members and, for finals, seeds."""

    stage: str
    members: tuple[Member, ...]
    seeds: tuple[int, ...] = ()
    wave: int | None = None  # population search: the wave it belongs to

    @property
    def cells(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.cell for m in self.members))

    @property
    def is_population(self) -> bool:
        return self.wave is not None

    @staticmethod
    def of(config: dict[str, Any]) -> TrialSpec:
        """The spec of a trial config in any of the forms in the module docstring."""
        if "final" in config:
            f = config["final"]
            return TrialSpec("final", (Member(str(f["cell"]), float(f["lr"])),),
                             tuple(int(s) for s in f["seeds"]))
        if "pilot" in config:
            p = config["pilot"]
            return TrialSpec("pilot", (Member(str(p["cell"]), float(p.get("lr", "nan"))),))
        if "members" in config:
            return TrialSpec(str(config.get("stage", "search")),
                             tuple(Member(str(m["cell"]), float(m["lr"]), int(m["number"]))
                                   for m in config["members"]), wave=int(config["wave"]))
        return TrialSpec(str(config.get("stage", "search")),
                         (Member(str(config["cell"]), float(config["lr"])),))
