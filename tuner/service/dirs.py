"""The layout of one experiment's folder (no Ray import: the CLI uses it before Ray starts)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ExperimentDirs:
    """Where everything of one experiment lives (absolute: Tune needs it, jobs change cwd)."""

    root: Path
    # JAX's compilation cache of the trials; default <root>/jax_cache (``--compile-cache``)
    compile_cache: Path | None = None

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
    def jax_cache(self) -> Path:  # several experiments may share one (``--compile-cache``)
        return self.compile_cache or self.root / "jax_cache"

    @property
    def experiment_file(self) -> Path:  # the experiment file as it was at the first run
        return self.root / "experiment.yaml"

    @property
    def locations(self) -> Path:  # every root the folder was driven from (moved, copied)
        return self.root / "locations.json"

    @property
    def lock(self) -> Path:  # the driver's lock (tuner.service.folder_lock)
        return self.root / "driver.lock"

    @property
    def pilot(self) -> Path:  # what --pilot measured and projected
        return self.root / "pilot.json"

    @property
    def plan(self) -> Path:  # each stage's programs and GPU share, fixed when it first starts
        return self.root / "plan.json"

    @property
    def pilot_runs(self) -> Path:  # the pilot's Tune run
        return self.root / "pilot"

    @property
    def report(self) -> Path:  # summary.md, plots, trials.csv/.parquet
        return self.root / "report"

    @property
    def summary(self) -> Path:  # the report's text, written last: marks the experiment done
        return self.report / "summary.md"

    @property
    def report_trials(self) -> Path:  # every trial of every stage, one row each (+ .parquet)
        return self.report / "trials.csv"

    @property
    def lr_map(self) -> Path:  # the chosen rate per cell over the grid's axes
        return self.report / "lr_map.png"

    def claim_plot(self, number: int) -> Path:
        """The plot of claim ``number`` (1, 2, ... as the report lists them)."""
        return self.report / f"claim{number}.png"

    def round_runs(self, name: str) -> Path:
        """A search round's Tune run (``search``, ``search_wider_low``, ...)."""
        return self.root / name

    def search_rounds(self) -> list[str]:
        """The search rounds that have a Tune run here: ``search`` first, then the widened and
        re-searched ones (``--widen-edges``, ``--research``) by name."""
        found = sorted(p.name for p in self.root.glob("search*") if p.is_dir())
        return sorted(found, key=lambda name: name != "search")

    @staticmethod
    def wider_round(edge: str) -> str:
        """The name of the round that widens the range at ``edge`` ("low" or "high")."""
        return f"search_wider_{edge}"

    def round_studies(self, name: str) -> Path:
        """A round's journals: ``studies/`` for the first, ``studies/wider_<edge>`` for a
        widened one, ``studies/<name>`` for a re-search (the names earlier folders hold)."""
        if name == "search":
            return self.studies
        return self.studies / (name.removeprefix("search_") if name.startswith("search_wider_")
                               else name)

    @property
    def finals_runs(self) -> Path:  # the finals' Tune run
        return self.root / "finals"

    def added_seeds_runs(self, seeds) -> Path:
        """The Tune run of finals seeds added to a finished experiment, named by them (a rerun
        resumes it; a run for other seeds never restores it)."""
        return self.root / ("finals-seeds-" + "-".join(map(str, seeds)))

    def all_finals_runs(self) -> list[Path]:
        """The finals' Tune run and every added seeds' one."""
        return [self.finals_runs, *sorted(self.root.glob("finals-seeds-*"))]

    def stale_finals(self, n: int) -> Path:
        """Where finals that trained a rate no longer picked are set aside (n = 1, 2, ...)."""
        return self.root / f"finals-stale-{n}"
