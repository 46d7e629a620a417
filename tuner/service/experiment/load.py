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
import re
from pathlib import Path
from typing import Any

from data.registry import metric_mode, metric_names
from tuner.core import routing
from tuner.core.config import RunConfig
from tuner.core.seeds import SEARCH_SEED
from tuner.service.experiment.claims import ALL_CLAIM_KEYS, Claim, parse_claim
from tuner.service.experiment.grid import (
    RESERVED,
    apply_fields,
    cell_id,
    cell_text,
    grid_cells,
)
from tuner.service.experiment.lines import Lines, SearchSpaceError
from tuner.service.experiment.values import Invalid, as_bool, as_int, as_number, as_str, what

SEARCH_SPACES = Path(__file__).resolve().parents[3] / "search_spaces"
# Training seeds from SEARCH_SEED up are reserved for the learning-rate search (tuner.core.seeds),
# so finals.seeds must lie in [0, SEARCH_SEED).


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    path: Path
    hypothesis: str
    claims: tuple[Claim, ...]
    base: RunConfig  # fixed settings applied
    grid: dict[str, list]  # dotted field -> values; cells are the product
    lr_low: float
    lr_high: float
    trials_per_cell: int
    max_concurrent: int | None  # trials running at once over all cells; None: "auto"
    population: int  # learning rates of a cell trained together in one trial (1: one per trial)
    share_program: bool  # population: cells that compile to one program train in one trial
    metric: str
    mode: str
    grace_period: int  # steps before ASHA may stop a trial
    reduction_factor: float
    seeds: tuple[int, ...]
    cpus_per_trial: float
    gpus_per_trial: float
    wandb_project: str

    @property
    def max_t(self) -> int:
        return self.base.train.steps

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
    "search": {"lr_low", "lr_high", "trials_per_cell", "max_concurrent", "population",
               "share_program"},
    "asha": {"metric", "mode", "grace_period", "reduction_factor"},
    "finals": {"seeds"},
    "resources": {"cpus_per_trial", "gpus_per_trial"},
    "wandb": {"project"},
    "smoke": {"fixed", "grid", "search", "asha", "finals", "resources"},
}
# RunConfig fields an experiment file must not set: the service sets them itself.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_WANDB_BAD = set("/\\#?%:")


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


# ---- value checks: each returns the checked value or raises Invalid("<problem>; allowed: ...")


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

    def get(section: str, key: str, fn, allowed: str, default: Any = ...):
        body = cfg.get(section) or {}
        if key not in body:
            if default is not ...:
                return default
            raise lines.error(source(section, key), f"is missing; allowed: {allowed}")
        return check((section, key), fn, body[key], allowed)

    def at_least(lo: float, value: float, allowed: str) -> float:
        if not value >= lo:
            raise Invalid(f"{value!r} is not allowed; allowed: {allowed}")
        return value

    def positive(value: Any, allowed: str) -> float:
        number = as_number(value, allowed)
        if not number > 0:
            raise Invalid(f"{value!r} is not allowed; allowed: {allowed}")
        return number

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

    lr_low = get("search", "lr_low", positive, "a finite number > 0 (e.g. 1.0e-4)")
    lr_high = get("search", "lr_high", as_number, f"a finite number > lr_low={lr_low:g}")
    if not lr_high > lr_low:
        raise lines.error(source("search", "lr_high"), f"{lr_high:g} is not allowed; allowed: "
                          f"a finite number > lr_low={lr_low:g}")
    count = lambda v, a: at_least(1, as_int(v, a), a)  # noqa: E731
    trials_per_cell = get("search", "trials_per_cell", count, "an integer >= 1")
    # "auto": as many trials as the cluster's resources hold (tuner.service.concurrency)
    max_concurrent = get("search", "max_concurrent",
                         lambda v, a: None if v == "auto" else count(v, a),
                         "an integer >= 1 or auto", default=2)

    # a cell's rates trained together (tuner.service.search.population): waves of this many
    population = get("search", "population", count, "an integer >= 1", default=1)
    if population > trials_per_cell:
        raise lines.error(source("search", "population"), f"{population} is not allowed; "
                          f"allowed: an integer in 1..trials_per_cell={trials_per_cell}")
    share_program = get("search", "share_program", as_bool, "true or false", default=False)
    if share_program and population == 1:
        raise lines.error(source("search", "share_program"), "true needs a population; "
                          "allowed: false, or true with search.population >= 2")

    seeds = _seeds(cfg, lines, source)

    steps = base.train.steps
    if steps % base.train.eval_every:
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
    metric = get("asha", "metric", as_str, list(metrics))
    if metric not in metrics:
        raise lines.error(source("asha", "metric"), f"{metric!r} is not a metric of task "
                          f"{base.task!r}; allowed: {list(metrics)}")
    mode = get("asha", "mode", as_str, ["min", "max"])
    if mode not in ("min", "max"):
        raise lines.error(source("asha", "mode"), f"{mode!r} is not allowed; allowed: "
                          "['min', 'max']")
    if mode != metric_mode(base.task, metric):  # the task says which way its metric is better
        raise lines.error(source("asha", "mode"), f"{mode!r} with metric {metric} (where "
                          f"{'higher' if metric_mode(base.task, metric) == 'max' else 'lower'}"
                          f" is better); allowed: {metric_mode(base.task, metric)!r}")
    grace_period = get("asha", "grace_period", as_int, f"an integer in 1..train.steps={steps}")
    if not 1 <= grace_period <= steps:
        raise lines.error(source("asha", "grace_period"), f"{grace_period} is not allowed; "
                          f"allowed: an integer in 1..train.steps={steps}")
    reduction_factor = get("asha", "reduction_factor", as_number, "a finite number > 1")
    if not reduction_factor > 1:
        raise lines.error(source("asha", "reduction_factor"), f"{reduction_factor:g} is not "
                          "allowed; allowed: a finite number > 1")

    cpus = get("resources", "cpus_per_trial", positive, "a finite number > 0 (CPUs per "
               "trial, e.g. 1 or 0.5)", default=1.0)
    gpus_allowed = ("a number >= 0: a fraction <= 1 (trials share a GPU) or a whole number "
                    "of GPUs")
    gpus = get("resources", "gpus_per_trial", lambda v, a: at_least(0, as_number(v, a), a),
               gpus_allowed, default=0.0)
    if gpus > 1 and not gpus.is_integer():
        raise lines.error(source("resources", "gpus_per_trial"), f"{gpus:g} is not allowed; "
                          f"allowed: {gpus_allowed}")

    project = get("wandb", "project", as_str, "a W&B project name", default="lds-tuner")
    if not project.strip() or len(project) > 128 or _WANDB_BAD & set(project):
        raise lines.error(source("wandb", "project"), f"{project!r} is not a W&B project name; "
                          "allowed: 1-128 characters, none of / \\ # ? % :")

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
        lr_low=lr_low,
        lr_high=lr_high,
        trials_per_cell=trials_per_cell,
        max_concurrent=max_concurrent,
        population=population,
        share_program=share_program,
        metric=metric,
        mode=mode,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        seeds=seeds,
        cpus_per_trial=float(cpus),
        gpus_per_trial=float(gpus),
        wandb_project=project,
    )


def _seeds(cfg: dict, lines: Lines, source) -> tuple[int, ...]:
    allowed = (f"a list of at least 2 distinct integers in [0, {SEARCH_SEED - 1}] (seeds >= "
               f"{SEARCH_SEED} are reserved for the learning-rate search, which must not train "
               "with a seed of the finals)")
    where = source("finals", "seeds")
    if "seeds" not in cfg["finals"]:
        raise lines.error(where, f"is missing; allowed: {allowed}")
    seeds = cfg["finals"]["seeds"]
    if not isinstance(seeds, list) or len(seeds) < 2:
        raise lines.error(where, f"{seeds!r} is not allowed; allowed: {allowed}")
    for i, s in enumerate(seeds):
        try:
            as_int(s, allowed)
        except Invalid as e:
            raise lines.error(where, f"item {i}: {e}", at=(*where, i)) from None
        if not 0 <= s < SEARCH_SEED:
            raise lines.error(where, f"item {i}: {s} is out of range; allowed: {allowed}",
                              at=(*where, i))
        if s in seeds[:i]:
            raise lines.error(where, f"item {i}: {s} is given twice; allowed: {allowed}",
                              at=(*where, i))
    return tuple(seeds)

