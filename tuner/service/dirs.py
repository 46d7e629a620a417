"""The layout of one experiment's folder (no Ray import: the CLI uses it before Ray starts)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ExperimentDirs:
    """Where everything of one experiment lives (absolute: Tune needs it, jobs change cwd)."""

    root: Path

    @property
    def studies(self) -> Path:  # one Optuna journal per cell
        return self.root / "studies"

    @property
    def best(self) -> Path:  # stage-1 result (best lr per cell); marks the search done
        return self.root / "search_best.json"

    @property
    def options(self) -> Path:  # search options recorded at the first run (--widen-edges)
        return self.root / "search_options.json"

    @property
    def search_trials(self) -> Path:  # every stage-1 trial of every round, from the studies
        return self.root / "search_trials.csv"

    @property
    def finals(self) -> Path:  # stage-2 result (one row per final run); marks finals done
        return self.root / "finals.json"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def times(self) -> Path:  # the stages' wall times of the last run (the viewer's cost view)
        return self.root / "times.json"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def jax_cache(self) -> Path:
        return self.root / "jax_cache"
