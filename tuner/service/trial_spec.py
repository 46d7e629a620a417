"""What one Tune trial trains and reports: its config written and read here, and nowhere else.

A trial's config is a plain dict (Tune stores it in ``params.json``, hands it to the trainable
and to the searchers' callbacks), in one of four forms, each written by one function below:

- a search trial, :func:`search_config`: ``{"cell", "lr", "stage", "overrides", <worker>}``;
- a population, :func:`population_config`: ``{"stage", "wave", "members": [{"cell",
  "number", "lr", "source"}, ...], "cells": {cell: overrides}, "halving", <worker>}``
  (``source`` absent in folders written before it);
- a finals trial: ``{"final": final_spec(...)}`` (Tune grid-searches the finals' specs);
- a pilot trial: ``{"pilot": pilot_spec(...)}``.

Everything that reads a trial (trainables, status file, W&B tags, trial names, viewer, report)
goes through :meth:`TrialSpec.of`, :meth:`Worker.of` and :func:`overrides`, so no reader
knows the four forms. The keys of what a trial reports per member or seed
(:func:`member_key`, :func:`seed_key`) live here too. Experiment folders written before this
module keep loading: the forms are the ones those folders hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Worker:
    """What a trial's process sets up before its first JAX computation: the experiment's
    compilation cache and, for fractional-GPU trials, its share of the GPU's memory."""

    jax_cache_dir: str = ""
    gpu_fraction: float = 0.0

    def fields(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def of(config: dict[str, Any]) -> Worker:
        """The worker settings of a config in any form (finals and pilots: the inner spec)."""
        inner = config.get("final") or config.get("pilot") or config
        return Worker(str(inner.get("jax_cache_dir") or ""),
                      float(inner.get("gpu_fraction") or 0.0))


def search_template(overrides: dict[str, Any], worker: Worker) -> dict[str, Any]:
    """What a search trial of a cell carries whatever its rate: the searcher holds one per
    cell (and pickles it with itself) and completes it by :func:`search_config`."""
    return {"stage": "search", "overrides": dict(overrides), **worker.fields()}


def search_config(cell: str, lr: float, template: dict[str, Any]) -> dict[str, Any]:
    """One search trial: ``cell`` at rate ``lr``, its :func:`search_template` (any dict
    without "cell" and "lr" in the searcher's own tests)."""
    return {"cell": cell, "lr": float(lr), **template}


def population_config(wave: int, members: Sequence[tuple[str, int, float]],
                      cells: dict[str, dict[str, Any]], halving: dict[str, Any], worker: Worker,
                      sources: Sequence[str] | None = None) -> dict[str, Any]:
    """One population: ``members`` (cell, Optuna trial number, rate) trained together,
    ``cells`` their cells' grid overrides, ``halving`` the rule that stops members
    (:class:`tuner.service.search.halving.SuccessiveHalving`'s dict), ``sources`` where each
    member's rate was proposed (W&B's per-member runs carry it)."""
    sources = list(sources) if sources is not None else [""] * len(members)
    return {"stage": "search", "wave": wave,
            "members": [{"cell": c, "number": int(n), "lr": float(lr), "source": str(src)}
                        for (c, n, lr), src in zip(members, sources, strict=True)],
            "cells": {c: dict(cells[c]) for c in dict.fromkeys(c for c, _, _ in members)},
            "halving": halving, **worker.fields()}


def final_spec(cell: str, lr: float, seeds: Sequence[int], overrides: dict[str, Any],
               worker: Worker) -> dict[str, Any]:
    """One finals trial's spec (its config is ``{"final": spec}``): all ``seeds`` of ``cell``
    at its best rate."""
    return {"stage": "final", "cell": cell, "lr": float(lr), "seeds": [int(s) for s in seeds],
            "overrides": dict(overrides), **worker.fields()}


def shared_final_spec(members: Sequence[tuple[str, float, int]],
                      cells: dict[str, dict[str, Any]], worker: Worker) -> dict[str, Any]:
    """One finals trial's spec (config ``{"final": spec}``) of a shared program
    (``tuner.service.plan``): ``members`` (cell, its best rate, seed), ``cells`` their grid
    overrides. Each member reports under :func:`member_key` of its position."""
    return {"stage": "final",
            "members": [{"cell": c, "lr": float(lr), "seed": int(s)} for c, lr, s in members],
            "cells": {c: dict(cells[c]) for c in dict.fromkeys(c for c, _, _ in members)},
            **worker.fields()}


def pilot_spec(cell: str, copy: int, lr: float, seeds: Sequence[int],
               overrides: dict[str, Any], population_size: int, lr_range: tuple[float, float],
               worker: Worker) -> dict[str, Any]:
    """One pilot trial's spec (config ``{"pilot": spec}``): ``copy`` of the cell (a shape's
    representative) measured at ``lr``, its finals' ``seeds`` and a search population of
    ``population_size`` rates over ``lr_range``."""
    return {"cell": cell, "copy": copy, "lr": float(lr), "seeds": [int(s) for s in seeds],
            "overrides": dict(overrides), "population_size": int(population_size),
            "lr_low": float(lr_range[0]), "lr_high": float(lr_range[1]), **worker.fields()}


def overrides(config: dict[str, Any], cell: str | None = None) -> dict[str, Any]:
    """The grid overrides of ``cell`` in a population config, or of the trial's one cell."""
    inner = config.get("final") or config.get("pilot") or config
    if "members" in inner:
        return inner["cells"][cell if cell is not None else inner["members"][0]["cell"]]
    return inner["overrides"]


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a trial: its cell, rate, Optuna trial number (search) or seed (finals),
    and where the search proposed it (``source``: "stratified", "neighbour:<cell>", "tpe";
    empty where the config does not say)."""

    cell: str
    lr: float
    number: int | None = None
    seed: int | None = None
    source: str = ""


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """A trial's stage ("search", "final" or "pilot"), its members and, for finals, seeds."""

    stage: str
    members: tuple[Member, ...]
    seeds: tuple[int, ...] = ()
    wave: int | None = None  # population search: the wave it belongs to
    shared: bool = False  # finals of a shared program: members report under member_key

    def prefix(self, i: int) -> str:
        """The result-key prefix of member ``i``'s values (:func:`part` reads them)."""
        if self.stage == "final" and not self.shared:
            return seed_key(int(self.members[i].seed), "")
        return member_key(i, "")

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
            if "members" in f:  # a shared program (shared_final_spec)
                members = tuple(Member(str(m["cell"]), float(m["lr"]), seed=int(m["seed"]))
                                for m in f["members"])
            else:  # one cell's seeds (final_spec), the form of folders before shared finals
                members = tuple(Member(str(f["cell"]), float(f["lr"]), seed=int(s))
                                for s in f["seeds"])
            return TrialSpec("final", members,
                             tuple(dict.fromkeys(int(m.seed) for m in members)),
                             shared="members" in f)
        if "pilot" in config:
            p = config["pilot"]
            return TrialSpec("pilot", (Member(str(p["cell"]), float(p.get("lr", "nan"))),),
                             tuple(int(s) for s in p.get("seeds", ())))
        if "members" in config:
            return TrialSpec(str(config.get("stage", "search")),
                             tuple(Member(str(m["cell"]), float(m["lr"]), int(m["number"]),
                                          source=str(m.get("source", "")))
                                   for m in config["members"]), wave=int(config["wave"]))
        return TrialSpec(str(config.get("stage", "search")),
                         (Member(str(config["cell"]), float(config["lr"])),))


def member_key(index: int, key: str) -> str:
    """Result key of member ``index``'s value in a population trial (``member_3/eval/nmse``)."""
    return f"member_{index}/{key}"


def seed_key(seed: int, metric: str) -> str:
    """Result key of one seed's metric in a finals trial (``seed_1/eval/nmse``)."""
    return f"seed_{seed}/{metric}"


def part(result: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``result`` under ``prefix`` (:func:`member_key` or :func:`seed_key` with
    an empty key), the prefix stripped: what one member or one seed reported."""
    return {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}
