"""Loading an experiment file into an :class:`Experiment`: every section checked, every cell built.

A file is the only place an experiment is defined (grid axes, fixed settings, LR range, trials
per cell, ASHA, finals, hypothesis). Everything is validated here, before Ray starts: a bad file
fails with ``<file>:<line>: <field>: <what is wrong>; allowed: ...`` (never a traceback), and
every cell's ``RunConfig`` (the product of all grid axes) is built once so an impossible value
or combination in any cell is caught up front.

Types are strict: an integer field takes an integer only (not ``3.0``, not ``true``); booleans
are never numbers. A float field takes an integer, a float, or a string written as a plain
decimal number: YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) or ``-.5`` as a *string*, and such a
string is accepted and converted. ``nan`` and ``inf`` are never accepted.

The checks live beside this module: ``lines`` (file positions, duplicate keys), ``values``
(types), ``grid`` (fixed and grid onto RunConfig, every cell), ``claims`` (the claims).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.registry import metric_names
from tuner.core import routing
from tuner.core.config import RunConfig
from tuner.service.experiment.claims import ALL_CLAIM_KEYS, Claim, parse_claim
from tuner.service.experiment.grid import (
    RESERVED,
    apply_fields,
    cell_id,
    cell_text,
    grid_cells,
)
from tuner.service.experiment.lines import Lines, SearchSpaceError
from tuner.service.experiment.sections import (
    SECTIONS,
    Asha,
    FieldError,
    Finals,
    Resources,
    Search,
    Wandb,
    keys,
)
from tuner.service.experiment.values import Invalid, as_str, what
from tuner.service.objective import Objective

SEARCH_SPACES = Path(__file__).resolve().parents[3] / "search_spaces"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A checked experiment: its grid of RunConfigs and one frozen section per part of the file
    (:mod:`tuner.service.experiment.sections`)."""

    name: str
    path: Path
    hypothesis: str
    claims: tuple[Claim, ...]
    base: RunConfig  # fixed settings applied
    grid: dict[str, list]  # dotted field -> values; cells are the product
    search: Search
    asha: Asha
    finals: Finals
    resources: Resources
    wandb: Wandb

    @property
    def max_t(self) -> int:
        return self.base.train.steps

    @property
    def objective(self) -> Objective:
        """What every stage ranks by (``asha.metric`` / ``asha.mode``)."""
        return self.asha.objective

    def cells(self) -> dict[str, dict[str, Any]]:
        """Cell id -> its grid overrides, in grid order (ids are readable and filesystem safe)."""
        axes = list(self.grid)
        out = {}
        for values in itertools.product(*(self.grid[a] for a in axes)):
            over = dict(zip(axes, values, strict=True))
            out[cell_id(over)] = over
        return out


_TOP = {"name", "hypothesis", "claims", "grid", "fixed", "search", "asha", "finals",
        "resources", "wandb", "smoke"}
_REQUIRED = ("name", "hypothesis", "grid", "search", "asha", "finals")
_SECTIONS = {
    "fixed": set(),
    "grid": set(),
    **{name: keys(name) for name in SECTIONS},
    "smoke": {"fixed", "grid", "search", "asha", "finals", "resources"},
}
# RunConfig fields an experiment file must not set: the service sets them itself.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def known() -> list[str]:
    return sorted(p.stem for p in SEARCH_SPACES.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """An experiment name (file in search_spaces/) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = SEARCH_SPACES / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise SearchSpaceError(f"unknown experiment {name_or_path!r}; known experiments: "
                           f"{', '.join(known())} (files in {SEARCH_SPACES})")


def _merge(base: dict, over: dict) -> dict:
    """``smoke:`` overrides: sections merge field by field, except ``grid`` (replaced)."""
    out = dict(base)
    for section, body in over.items():
        if body is None:
            continue
        out[section] = body if section == "grid" else {**(base.get(section) or {}), **body}
    return out


def load(name_or_path: str, smoke: bool = False) -> Experiment:
    """Loads and validates an experiment; ``smoke`` applies the file's ``smoke:`` overrides."""
    path = resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SearchSpaceError(f"{path}:1: not UTF-8 text ({e.reason} at byte {e.start}); "
                               "allowed: a UTF-8 YAML file") from None
    except OSError as e:
        raise SearchSpaceError(f"{path}: cannot be read: {e.strerror}") from None
    lines = Lines(text, path)
    raw = lines.data
    sections = f"a mapping of sections (required: {list(_REQUIRED)}; all: {sorted(_TOP)})"
    if raw is None:
        raise lines.error(("<file>",), f"is empty; allowed: {sections}")
    if not isinstance(raw, dict):
        raise lines.error(("<file>",), f"{what(raw)}; allowed: {sections}")
    for key in raw:
        if key not in _TOP:
            raise lines.error((key,), f"unknown section; allowed: {sorted(_TOP)}")
    smoke_raw = raw.get("smoke")
    for section, allowed in _SECTIONS.items():
        where_body = [((section,), raw.get(section))]
        if section != "smoke" and isinstance(smoke_raw, dict):
            where_body.append((("smoke", section), smoke_raw.get(section)))
        for where, body in where_body:
            if body is None:
                continue
            if not isinstance(body, dict):
                expected = ("dotted config fields (e.g. data.lambda_val) to values" if section in
                        ("fixed", "grid") else f"its fields {sorted(allowed)}")
                raise lines.error(where, f"{what(body)}, not a mapping; allowed: a mapping of "
                                  f"{expected}")
            if section in ("fixed", "grid"):
                continue
            for key in body:
                if key not in allowed:
                    raise lines.error((*where, key), f"unknown field; allowed: {sorted(allowed)}")
    for key in _REQUIRED:
        if key not in raw:
            raise lines.error((key,), f"required section is missing; allowed: {sections}")
        if raw[key] is None:
            expected = {"name": "a plain file name", "hypothesis": "a sentence",
                    "grid": "a mapping of dotted config fields to lists of values"}
            raise lines.error((key,), "required section is empty; allowed: " + expected.get(
                key, f"a mapping of its fields {sorted(_SECTIONS.get(key, ()))}"))
    cfg = _merge(raw, smoke_raw or {}) if smoke else raw

    def source(*keys) -> tuple:
        """Where a (merged) field was written: under ``smoke:`` if overridden there."""
        if smoke and ("smoke", *keys) in lines.lines:
            return ("smoke", *keys)
        if smoke and keys and keys[0] == "grid" and ("smoke", "grid") in lines.lines:
            return ("smoke", *keys)  # smoke's grid replaces the whole grid
        return keys

    return _build(cfg, lines, path, source, smoke)


def _build(cfg: dict, lines: Lines, path: Path, source, smoke: bool) -> Experiment:
    def check(keys: tuple, fn, *args):
        try:
            return fn(*args)
        except Invalid as e:
            raise lines.error(source(*keys), str(e)) from None

    def section(name: str, parse: Callable[..., Any], *args):
        """The section ``name`` parsed and checked, its errors at its field's line."""
        try:
            return parse(cfg.get(name) or {}, *args)
        except FieldError as e:
            where = source(name, e.field)
            raise lines.error(where, e.message,
                              at=None if e.item is None else (*where, e.item)) from None

    name = check(("name",), as_str, cfg["name"], "a plain file name")
    if not _NAME.fullmatch(name):
        raise lines.error(("name",), f"{name!r} is not a plain file name; allowed: 1-100 of "
                          "letters, digits, '.', '_', '-', not starting with '.' (the "
                          "experiment's folder is <out>/<name>; no '/')")
    hypothesis = check(("hypothesis",), as_str, cfg["hypothesis"], "a sentence").strip()
    if not hypothesis:
        raise lines.error(("hypothesis",), "is empty; allowed: a non-empty sentence")

    fixed = cfg.get("fixed") or {}
    for key in fixed:
        if key in RESERVED:
            raise lines.error(source("fixed", key), RESERVED[key])
    base = apply_fields(RunConfig(), fixed, lines, "fixed", source)
    grid, hints, base_cells = grid_cells(cfg, base, fixed, lines, source)

    search = section("search", Search.parse)
    finals = section("finals", Finals.parse)

    steps = base.train.steps
    if "train.eval_every" not in grid and steps % base.train.eval_every:  # else per cell below
        raise lines.error(source("fixed", "train.steps"), f"train.steps={steps} must be a "
                          f"multiple of train.eval_every={base.train.eval_every} (ASHA compares "
                          f"trials at evaluations); allowed: a multiple of "
                          f"{base.train.eval_every}")
    for over, run in base_cells:
        if run.train.steps % run.train.eval_every:
            raise lines.error(source("grid", "train.eval_every"), f"train.eval_every="
                              f"{run.train.eval_every} does not divide train.steps={steps} "
                              f"(cell {cell_text(over)}); allowed: divisors of {steps}")
    # what this experiment's task reports, and what every cell's model adds (routing metrics)
    metrics = metric_names(base.task) + tuple(sorted(set.intersection(
        *(set(routing.metric_names(run.model)) for _, run in base_cells))))
    asha = section("asha", Asha.parse, base.task, metrics, steps)
    problem = rungs_off_evaluations(asha, steps, base_cells)
    if problem:
        raise lines.error(source("asha", "grace_period"), problem)
    resources = section("resources", Resources.parse)
    wandb = section("wandb", Wandb.parse)

    claims = cfg.get("claims")
    if claims is not None and not isinstance(claims, list):
        raise lines.error(("claims",), f"{what(claims)}; allowed: a list of claims (mappings "
                          f"with keys {ALL_CLAIM_KEYS})")
    return Experiment(
        name=name + ("-smoke" if smoke else ""),
        path=path,
        hypothesis=hypothesis,
        claims=tuple(parse_claim(c, i, lines, grid, hints, fixed, metrics)
                     for i, c in enumerate(claims or [])),
        base=base,
        grid=grid,
        search=search,
        asha=asha,
        finals=finals,
        resources=resources,
        wandb=wandb,
    )


def rungs_off_evaluations(asha: Asha, steps: int, cells: list[tuple[dict, RunConfig]]
                          ) -> str | None:
    """Why the rungs do not all fall on evaluations (None when they do).

    Members are compared at evaluations only: a population halves once per evaluation, so
    rungs between two evaluations would collapse into one halving (grace 250, rf 2,
    eval_every 1000: one 8 -> 4 at step 1000, not 8 -> 1) and the pilot would project
    halvings that never happen; ASHA would compare at the next evaluation instead. Refused
    when the file is read, with the nearest settings that work."""
    from tuner.service.search.halving import rungs

    every = sorted({run.train.eval_every for _, run in cells})
    at = rungs(asha.grace_period, asha.reduction_factor, steps)
    for over, run in cells:
        e = run.train.eval_every
        off = [r for r in at if r % e]
        if not off:
            continue
        graces = [g for g in range(1, steps + 1) if all(
            r % x == 0 for r in rungs(g, asha.reduction_factor, steps) for x in every)]
        below = [g for g in graces if g < asha.grace_period][-1:]
        above = [g for g in graces if g > asha.grace_period][:1]
        divisor = math.gcd(steps, *at)
        evals = [x for x in range(1, divisor + 1) if divisor % x == 0]
        near = [x for x in evals if x < e][-1:] + [x for x in evals if x > e][:1]
        cell = f" (cell {cell_text(over)})" if len(every) > 1 else ""
        return (f"{asha.grace_period} with reduction_factor="
                f"{asha.reduction_factor:g} puts rungs at steps {at}, but train.eval_every={e}"
                f"{cell} evaluates at multiples of {e}: rung(s) {off} fall between "
                "evaluations, where members cannot be compared (a population halves once per "
                "evaluation); allowed: asha.grace_period "
                f"{' or '.join(str(g) for g in below + above)} (the nearest whose rungs are all "
                f"evaluations), or train.eval_every {' or '.join(map(str, near))} (dividing "
                "every rung and train.steps)")
    return None
