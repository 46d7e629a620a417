"""Experiment definitions: one YAML file per experiment in ``search_spaces/``, loaded and checked.

A file is the only place an experiment is defined (grid axes, fixed settings, LR range, trials
per cell, ASHA, finals, hypothesis). Everything is validated here, before Ray starts: a bad file
fails with ``<file>:<line>: <field>: <what is wrong>; allowed: ...`` (never a traceback), and
every cell's ``RunConfig`` (the product of all grid axes) is built once so an impossible value
or combination in any cell is caught up front.

Types are strict: an integer field takes an integer only (not ``3.0``, not ``true``); booleans
are never numbers. A float field takes an integer, a float, or a string written as a plain
decimal number: YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) or ``-.5`` as a *string*, and such a
string is accepted and converted. ``nan`` and ``inf`` are never accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from data.registry import metric_mode, metric_names
from tuner.core.config import RunConfig, replace
from tuner.core.seeds import SEARCH_SEED

__all__ = ["CLAIM_KINDS", "MAX_CELLS", "SEARCH_SEED", "SEARCH_SPACES", "Claim", "Experiment",
           "SearchSpaceError", "cell_id", "known", "load", "resolve"]

SEARCH_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
CLAIM_KINDS = ("trend", "compare", "effect_trend", "effect_compare")
# Training seeds from SEARCH_SEED up are reserved for the learning-rate search (tuner.core.seeds),
# so finals.seeds must lie in [0, SEARCH_SEED).
MAX_CELLS = 10_000  # more grid cells than this is a typo (every cell gets trials_per_cell runs)


class SearchSpaceError(ValueError):
    """A malformed or impossible experiment file; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One checkable part of the hypothesis, evaluated on the finals (lower = better).

    - trend: the metric moves with ``axis`` in ``direction`` (increasing | decreasing).
    - compare: ``better`` (a value of ``axis``) scores lower than the other values.
    - effect_trend: the effect of ``effect_axis`` (metric at its largest value minus at its
      smallest) moves with ``axis`` in ``direction``.
    - effect_compare: the effect of ``effect_axis`` is smaller when ``axis == better``.

    ``metrics`` (from ``metric: eval/x`` or ``metrics: [eval/a, eval/b]``; empty: the caller
    uses the experiment's ``asha.metric``) judges the claim on other reported metrics, e.g.
    ``eval/grokking_step`` when the search ranks runs by train accuracy.
    """

    kind: str
    text: str
    axis: str
    direction: str | None = None
    better: Any = None
    effect_axis: str | None = None
    metrics: tuple[str, ...] = ()


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


def cell_id(overrides: dict[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        short = key.split(".")[-1].replace("_val", "").replace("_size", "")
        parts.append(f"{short}={value}")
    return re.sub(r"[^A-Za-z0-9=.,_-]", "_", ",".join(parts))


def _field(keys: tuple) -> str:
    """``("claims", 0, "axis")`` -> ``claims[0].axis``."""
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


_STR_TAG = "tag:yaml.org,2002:str"


class _Lines:
    """Parses a YAML document (``data``) and keeps the line of every key path (and list item),
    for error messages. Rejects what PyYAML would silently accept: a key given twice (PyYAML
    keeps the last), a key that is not a plain name (``1:``, ``yes:``, ``<<:``)."""

    def __init__(self, text: str, path: Path):
        self.path = path
        self.lines: dict[tuple, int] = {}
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            self.data = None if root is None else loader.construct_document(root)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark else 1
            problem = getattr(e, "problem", None) or str(e)
            hint = ""
            if "\t" in (text.splitlines()[line - 1:line] or [""])[0]:
                hint = " (a tab: YAML indents with spaces only)"
            raise SearchSpaceError(f"{path}:{line}: not valid YAML: {problem}{hint}; allowed: "
                                   "a YAML mapping of sections, indented with spaces") from None
        except RecursionError:
            raise SearchSpaceError(f"{path}:1: not valid YAML: nested too deeply; allowed: an "
                                   "experiment file of a few levels") from None
        finally:
            loader.dispose()
        self._budget = 100_000  # nodes walked (aliases are walked again wherever used)
        if root is not None:
            self._walk(root, (), set())

    def _walk(self, node, prefix: tuple, on_path: set) -> None:
        if id(node) in on_path:
            raise self.error(prefix, "refers to itself (recursive YAML alias); allowed: plain "
                             "values")
        self._budget -= 1
        if self._budget < 0:
            raise self.error(prefix, "the document is too large (nested aliases?); allowed: "
                             "an experiment file of a few hundred lines")
        on_path = on_path | {id(node)}
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if not (isinstance(key, yaml.ScalarNode) and key.tag == _STR_TAG):
                    name = getattr(key, "value", "?")
                    raise SearchSpaceError(
                        f"{self.path}:{line}: {_field((*prefix, name))}: key {name!r} is not a "
                        "plain name (YAML reads it as a number, boolean, null or merge); "
                        "allowed: a name such as data.lambda_val (quote it if needed)")
                if key.value in first:
                    raise SearchSpaceError(
                        f"{self.path}:{line}: {_field((*prefix, key.value))}: given twice (first "
                        f"at line {first[key.value]}; YAML would silently keep only this one); "
                        "allowed: each key once")
                first[key.value] = line
                self.lines[(*prefix, key.value)] = line
                self._walk(value, (*prefix, key.value), on_path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[(*prefix, i)] = item.start_mark.line + 1
                self._walk(item, (*prefix, i), on_path)

    def error(self, keys: tuple, msg: str, at: tuple | None = None) -> SearchSpaceError:
        """``<file>:<line>: <keys>: msg``; the line is that of ``at`` (default ``keys``) or of
        its nearest written parent."""
        at = keys if at is None else at
        for n in range(len(at), 0, -1):
            if at[:n] in self.lines:
                return SearchSpaceError(f"{self.path}:{self.lines[at[:n]]}: {_field(keys)}: {msg}")
        return SearchSpaceError(f"{self.path}:1: {_field(keys)}: {msg}")


_TOP = {"name", "hypothesis", "claims", "grid", "fixed", "search", "asha", "finals",
        "resources", "wandb", "smoke"}
_REQUIRED = ("name", "hypothesis", "grid", "search", "asha", "finals")
_SECTIONS = {
    "fixed": set(),
    "grid": set(),
    "search": {"lr_low", "lr_high", "trials_per_cell", "max_concurrent"},
    "asha": {"metric", "mode", "grace_period", "reduction_factor"},
    "finals": {"seeds"},
    "resources": {"cpus_per_trial", "gpus_per_trial"},
    "wandb": {"project"},
    "smoke": {"fixed", "grid", "search", "asha", "finals", "resources"},
}
_TOP_FIELDS = ("task",)  # undotted RunConfig fields a file may set in fixed
# RunConfig fields an experiment file must not set: the service sets them itself.
_RESERVED = {
    "train.lr": "set by the learning-rate search; allowed: search.lr_low / search.lr_high",
    "train.seed": "set by the service (finals: finals.seeds; search: SEARCH_SEED="
                  f"{SEARCH_SEED}); allowed: finals.seeds",
}
_NOT_AXES = {  # fields that may be fixed but not a grid axis
    "train.steps": "is the budget, one per experiment (ASHA's max_t); allowed: set it in fixed",
    "task": "decides the metrics, one per experiment; allowed: set it in fixed",
}
_CLAIM_KEYS = {  # kind -> the keys it takes
    "trend": {"kind", "text", "axis", "direction", "metric", "metrics"},
    "compare": {"kind", "text", "axis", "better", "metric", "metrics"},
    "effect_trend": {"kind", "text", "axis", "direction", "effect_axis", "metric", "metrics"},
    "effect_compare": {"kind", "text", "axis", "better", "effect_axis", "metric", "metrics"},
}
_ALL_CLAIM_KEYS = ["kind", "text", "axis", "direction", "better", "effect_axis", "metric",
                   "metrics"]
_CONFIG_ERRORS = (ValueError, TypeError, ArithmeticError)  # what a config's checks raise
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
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


# ---- value checks: each returns the checked value or raises _Invalid("<problem>; allowed: ...")


class _Invalid(ValueError):
    pass


def _what(value: Any) -> str:
    if value is None:
        return "has no value (null)"
    if isinstance(value, bool):
        return f"{value!r} is a boolean"
    if isinstance(value, str):
        return f"{value!r} is a string"
    if isinstance(value, float):
        return f"{value!r} is a float"
    if isinstance(value, int):
        return f"{value!r} is an integer"
    if isinstance(value, list):
        return f"{value!r} is a list"
    if isinstance(value, dict):
        return f"{value!r} is a mapping"
    return f"{value!r} is a {type(value).__name__}"


def _as_int(value: Any, allowed: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    hint = (" (write it without a dot or exponent)" if isinstance(value, float) else
            " (write it unquoted, without a dot or exponent)" if isinstance(value, str) else "")
    raise _Invalid(f"{_what(value)}, not an integer{hint}; allowed: {allowed}")


def _as_number(value: Any, allowed: str, keep_int: bool = False) -> float:
    """A finite number; a plain decimal string (``"1e-3"``) is converted. ``keep_int`` keeps an
    integer an integer (a grid value's cell id stays as written)."""
    number = value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise _Invalid(f"{_what(value)}, not a number; allowed: {allowed}")
    if not math.isfinite(number):
        raise _Invalid(f"{value!r} is not finite; allowed: {allowed}")
    return number if keep_int and isinstance(number, int) else float(number)


def _as_str(value: Any, allowed: str) -> str:
    if isinstance(value, str):
        return value
    hint = " (YAML reads yes/no/on/off/true/false as booleans: quote it)" \
        if isinstance(value, bool) else " (quote it)" if isinstance(value, int | float) else ""
    raise _Invalid(f"{_what(value)}, not a string{hint}; allowed: {allowed}")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return getattr(hint, "__name__", str(hint))


def _coerce(hint: Any, value: Any) -> Any:
    """``value`` checked against a config field's type annotation (lists become tuples)."""
    allowed = _describe(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            try:
                return _coerce(rest[0], value)
            except _Invalid as e:
                raise _Invalid(str(e).rsplit("; allowed: ", 1)[0] + f"; allowed: {allowed}"
                               ) from None
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(f"{_what(value)}, not a boolean; allowed: true or false")
    if hint is int:
        return _as_int(value, allowed)
    if hint is float:
        return _as_number(value, allowed, keep_int=True)
    if hint is str or (origin is typing.Literal and all(isinstance(a, str) for a in args)):
        return _as_str(value, allowed)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"{_what(value)}; allowed: {allowed}")
        item = args[0]
        try:
            return tuple(_coerce(item, v) for v in value)
        except _Invalid as e:
            raise _Invalid(f"item {str(e).rsplit('; allowed: ', 1)[0]}; allowed: {allowed}"
                           ) from None
    if isinstance(value, list | dict):  # an annotation this loader does not know: scalars only
        raise _Invalid(f"{_what(value)}; allowed: a single value")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
    lines = _Lines(text, path)
    raw = lines.data
    sections = f"a mapping of sections (required: {list(_REQUIRED)}; all: {sorted(_TOP)})"
    if raw is None:
        raise lines.error(("<file>",), f"is empty; allowed: {sections}")
    if not isinstance(raw, dict):
        raise lines.error(("<file>",), f"{_what(raw)}; allowed: {sections}")
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
                what = ("dotted config fields (e.g. data.lambda_val) to values" if section in
                        ("fixed", "grid") else f"its fields {sorted(allowed)}")
                raise lines.error(where, f"{_what(body)}, not a mapping; allowed: a mapping of "
                                  f"{what}")
            if section in ("fixed", "grid"):
                continue
            for key in body:
                if key not in allowed:
                    raise lines.error((*where, key), f"unknown field; allowed: {sorted(allowed)}")
    for key in _REQUIRED:
        if key not in raw:
            raise lines.error((key,), f"required section is missing; allowed: {sections}")
        if raw[key] is None:
            what = {"name": "a plain file name", "hypothesis": "a sentence",
                    "grid": "a mapping of dotted config fields to lists of values"}
            raise lines.error((key,), "required section is empty; allowed: " + what.get(
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


def _build(cfg: dict, lines: _Lines, path: Path, source, smoke: bool) -> Experiment:
    def check(keys: tuple, fn, *args):
        try:
            return fn(*args)
        except _Invalid as e:
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
            raise _Invalid(f"{value!r} is not allowed; allowed: {allowed}")
        return value

    def positive(value: Any, allowed: str) -> float:
        number = _as_number(value, allowed)
        if not number > 0:
            raise _Invalid(f"{value!r} is not allowed; allowed: {allowed}")
        return number

    name = check(("name",), _as_str, cfg["name"], "a plain file name")
    if not _NAME.fullmatch(name):
        raise lines.error(("name",), f"{name!r} is not a plain file name; allowed: 1-100 of "
                          "letters, digits, '.', '_', '-', not starting with '.' (the "
                          "experiment's folder is <out>/<name>; no '/')")
    hypothesis = check(("hypothesis",), _as_str, cfg["hypothesis"], "a sentence").strip()
    if not hypothesis:
        raise lines.error(("hypothesis",), "is empty; allowed: a non-empty sentence")

    fixed = cfg.get("fixed") or {}
    for key in fixed:
        if key in _RESERVED:
            raise lines.error(source("fixed", key), _RESERVED[key])
    base = _apply(RunConfig(), fixed, lines, "fixed", source)
    grid, hints, base_cells = _grid(cfg, base, fixed, lines, source)

    lr_low = get("search", "lr_low", positive, "a finite number > 0 (e.g. 1.0e-4)")
    lr_high = get("search", "lr_high", _as_number, f"a finite number > lr_low={lr_low:g}")
    if not lr_high > lr_low:
        raise lines.error(source("search", "lr_high"), f"{lr_high:g} is not allowed; allowed: "
                          f"a finite number > lr_low={lr_low:g}")
    count = lambda v, a: at_least(1, _as_int(v, a), a)  # noqa: E731
    trials_per_cell = get("search", "trials_per_cell", count, "an integer >= 1")
    # "auto": as many trials as the cluster's resources hold (tuner.service.concurrency)
    max_concurrent = get("search", "max_concurrent",
                         lambda v, a: None if v == "auto" else count(v, a),
                         "an integer >= 1 or auto", default=2)

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
                              f"(cell {_cell_text(over)}); allowed: divisors of {steps}")
    metrics = metric_names(base.task)  # what this experiment's task reports
    metric = get("asha", "metric", _as_str, list(metrics))
    if metric not in metrics:
        raise lines.error(source("asha", "metric"), f"{metric!r} is not a metric of task "
                          f"{base.task!r}; allowed: {list(metrics)}")
    mode = get("asha", "mode", _as_str, ["min", "max"])
    if mode not in ("min", "max"):
        raise lines.error(source("asha", "mode"), f"{mode!r} is not allowed; allowed: "
                          "['min', 'max']")
    if mode != metric_mode(base.task, metric):  # the task says which way its metric is better
        raise lines.error(source("asha", "mode"), f"{mode!r} with metric {metric} (where "
                          f"{'higher' if metric_mode(base.task, metric) == 'max' else 'lower'}"
                          f" is better); allowed: {metric_mode(base.task, metric)!r}")
    grace_period = get("asha", "grace_period", _as_int, f"an integer in 1..train.steps={steps}")
    if not 1 <= grace_period <= steps:
        raise lines.error(source("asha", "grace_period"), f"{grace_period} is not allowed; "
                          f"allowed: an integer in 1..train.steps={steps}")
    reduction_factor = get("asha", "reduction_factor", _as_number, "a finite number > 1")
    if not reduction_factor > 1:
        raise lines.error(source("asha", "reduction_factor"), f"{reduction_factor:g} is not "
                          "allowed; allowed: a finite number > 1")

    cpus = get("resources", "cpus_per_trial", positive, "a finite number > 0 (CPUs per "
               "trial, e.g. 1 or 0.5)", default=1.0)
    gpus_allowed = ("a number >= 0: a fraction <= 1 (trials share a GPU) or a whole number "
                    "of GPUs")
    gpus = get("resources", "gpus_per_trial", lambda v, a: at_least(0, _as_number(v, a), a),
               gpus_allowed, default=0.0)
    if gpus > 1 and not gpus.is_integer():
        raise lines.error(source("resources", "gpus_per_trial"), f"{gpus:g} is not allowed; "
                          f"allowed: {gpus_allowed}")

    project = get("wandb", "project", _as_str, "a W&B project name", default="lds-tuner")
    if not project.strip() or len(project) > 128 or _WANDB_BAD & set(project):
        raise lines.error(source("wandb", "project"), f"{project!r} is not a W&B project name; "
                          "allowed: 1-128 characters, none of / \\ # ? % :")

    claims = cfg.get("claims")
    if claims is not None and not isinstance(claims, list):
        raise lines.error(("claims",), f"{_what(claims)}; allowed: a list of claims (mappings "
                          f"with keys {_ALL_CLAIM_KEYS})")
    return Experiment(
        name=name + ("-smoke" if smoke else ""),
        path=path,
        hypothesis=hypothesis,
        claims=tuple(_claim(c, i, lines, grid, hints, fixed, metrics)
                     for i, c in enumerate(claims or [])),
        base=base,
        grid=grid,
        lr_low=lr_low,
        lr_high=lr_high,
        trials_per_cell=trials_per_cell,
        max_concurrent=max_concurrent,
        metric=metric,
        mode=mode,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        seeds=seeds,
        cpus_per_trial=float(cpus),
        gpus_per_trial=float(gpus),
        wandb_project=project,
    )


def _seeds(cfg: dict, lines: _Lines, source) -> tuple[int, ...]:
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
            _as_int(s, allowed)
        except _Invalid as e:
            raise lines.error(where, f"item {i}: {e}", at=(*where, i)) from None
        if not 0 <= s < SEARCH_SEED:
            raise lines.error(where, f"item {i}: {s} is out of range; allowed: {allowed}",
                              at=(*where, i))
        if s in seeds[:i]:
            raise lines.error(where, f"item {i}: {s} is given twice; allowed: {allowed}",
                              at=(*where, i))
    return tuple(seeds)


def _cell_text(over: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in over.items())


def _grid(cfg: dict, base: RunConfig, fixed: dict, lines: _Lines, source
          ) -> tuple[dict[str, list], dict[str, Any], list[tuple[dict, RunConfig]]]:
    """The checked grid (values typed), each axis' type, and every cell's overrides with its
    full RunConfig (the product of all axes: a combination can be impossible)."""
    raw = cfg["grid"]
    if not isinstance(raw, dict) or not raw:
        raise lines.error(source("grid"), "is empty; allowed: a mapping of dotted config fields "
                          "(e.g. data.lambda_val) to lists of values")
    grid: dict[str, list] = {}
    hints: dict[str, Any] = {}
    for axis, values in raw.items():
        where = source("grid", axis)
        if axis in _RESERVED:
            raise lines.error(where, _RESERVED[axis])
        if axis in _NOT_AXES:
            raise lines.error(where, _NOT_AXES[axis])
        if axis in fixed:
            raise lines.error(where, f"is also set in fixed (line "
                              f"{lines.lines.get(source('fixed', axis), '?')}): ambiguous; "
                              "allowed: a field in fixed or in grid, not both")
        hint = hints[axis] = _hint(base, axis, lines, where)
        if not isinstance(values, list) or not values:
            raise lines.error(where, f"{'is an empty list' if values == [] else _what(values)}"
                              f"; allowed: a non-empty list of distinct values, each "
                              f"{_describe(hint)}")
        typed = []
        for i, v in enumerate(values):
            try:
                v = _coerce(hint, v)
            except _Invalid as e:
                raise lines.error(where, f"item {i}: {e}", at=(*where, i)) from None
            if v in typed:
                raise lines.error(where, f"item {i}: {v!r} is given twice (its cells would "
                                  "collapse into one); allowed: distinct values", at=(*where, i))
            typed.append(v)
        grid[axis] = typed
    n_cells = math.prod(len(v) for v in grid.values())
    if n_cells > MAX_CELLS:
        raise lines.error(source("grid"), f"{n_cells} cells (the product of "
                          f"{[len(v) for v in grid.values()]} values); allowed: at most "
                          f"{MAX_CELLS} cells")
    cells = []
    ids: dict[str, dict] = {}
    for values in itertools.product(*grid.values()):
        over = dict(zip(grid, values, strict=True))
        cid = cell_id(over)
        if cid in ids:
            raise lines.error(source("grid"), f"cells {_cell_text(ids[cid])} and "
                              f"{_cell_text(over)} get the same cell id {cid!r}; allowed: "
                              "values that differ in letters, digits or '.', '_', '-'")
        ids[cid] = over
        try:
            cells.append((over, replace(base, **over)))
        except _CONFIG_ERRORS as e:
            culprit = _culprit(base, over, str(e))
            if culprit is not None:
                raise lines.error(source("grid", culprit), _config_message(e)) from None
            raise lines.error(source("grid"), f"cell {_cell_text(over)} is impossible: "
                              f"{_config_message(e)}") from None
    return grid, hints, cells


def _config_message(e: Exception) -> str:
    """A config check's message in this module's form: ``...; allowed: ...``."""
    msg = str(e)
    if "allowed:" in msg:
        return msg
    for verb in (" must ", " needs "):
        head, sep, rule = msg.partition(verb)
        if sep:
            rule = rule.removeprefix("be ").removeprefix("lie ")
            return f"{head} is not allowed; allowed: {rule}"
    return f"{msg}; allowed: what that check of tuner.core.config accepts"


def _culprit(base: RunConfig, overrides: dict, message: str) -> str | None:
    """The override that alone (on ``base``) fails with the same ``message`` as all of them
    together, if there is one: the error is that value's own, not the combination's."""
    for key, value in overrides.items():
        try:
            replace(base, **{key: value})
        except _CONFIG_ERRORS as e:
            if str(e) == message:
                return key
    return None


def _hint(base: RunConfig, key: Any, lines: _Lines, where: tuple) -> Any:
    """The type annotation of a dotted RunConfig field; unknown fields fail naming the allowed."""
    head, _, rest = str(key).partition(".")
    if not rest and head in _TOP_FIELDS:
        return _hints(RunConfig)[head]
    sub = getattr(base, head, None)
    if not rest or not dataclasses.is_dataclass(sub):
        groups = [f.name for f in dataclasses.fields(base)
                  if dataclasses.is_dataclass(getattr(base, f.name))]
        raise lines.error(where, f"unknown field; allowed: <group>.<field> with group in "
                          f"{groups}" + (f", or {list(_TOP_FIELDS)}" if where[-2] == "fixed"
                                         else ""))
    fields = {f.name for f in dataclasses.fields(sub)}
    if rest not in fields:
        raise lines.error(where, f"unknown field; allowed: {head}.<field> with field in "
                          f"{sorted(fields)}")
    return _hints(type(sub))[rest]


def _apply(base: RunConfig, overrides: dict, lines: _Lines, section: str, source
           ) -> RunConfig:
    """Applies dotted overrides (each type-checked), turning any config error into a
    file/line/field error. All are applied at once, so their order in the file does not
    matter (``model.tie_embeddings`` may come before ``model.head``)."""
    typed = {}
    for key, value in overrides.items():
        where = source(section, key)
        hint = _hint(base, key, lines, where)
        try:
            typed[key] = _coerce(hint, value)
        except _Invalid as e:
            raise lines.error(where, str(e)) from None
    try:
        return replace(base, **typed)
    except _CONFIG_ERRORS as e:
        culprit = _culprit(base, typed, str(e))
        if culprit is not None:
            raise lines.error(source(section, culprit), _config_message(e)) from None
        raise lines.error(source(section), "these settings together are impossible: "
                          f"{_config_message(e)}") from None


def _claim(raw: Any, index: int, lines: _Lines, grid: dict, hints: dict, fixed: dict,
           metrics: tuple[str, ...]) -> Claim:
    where = ("claims", index)

    def err(key: str | None, msg: str) -> SearchSpaceError:
        return lines.error(where if key is None else (*where, key), msg)

    if not isinstance(raw, dict):
        raise err(None, f"{_what(raw)}; allowed: a mapping with keys {_ALL_CLAIM_KEYS}")
    for key in raw:
        if key not in _ALL_CLAIM_KEYS:
            raise err(key, f"unknown key; allowed: {_ALL_CLAIM_KEYS}")
    kind = raw.get("kind")
    if kind not in CLAIM_KINDS:
        raise err("kind", f"{kind!r} is not a claim kind; allowed: {list(CLAIM_KINDS)}")
    takes = _CLAIM_KEYS[kind]
    for key in raw:
        if key not in takes:
            raise err(key, f"does not apply to kind {kind!r}; allowed: for {kind}, "
                      f"{[k for k in _ALL_CLAIM_KEYS if k in takes]}")
    text = raw.get("text", kind)
    if not isinstance(text, str) or not text.strip():
        raise err("text", f"{_what(text) if not isinstance(text, str) else 'is empty'}; "
                  "allowed: a non-empty sentence")
    axes = [a for a, v in grid.items() if len(v) >= 2]
    for axis_key in ("axis", "effect_axis"):
        if axis_key not in takes:
            continue
        axis = raw.get(axis_key)
        if axis_key == "effect_axis" and axis == raw.get("axis"):
            raise err(axis_key, f"{axis!r} equals axis (an axis' effect along itself); allowed: "
                      f"another grid axis: {[a for a in axes if a != axis]}")
        if not isinstance(axis, str) or axis not in grid:
            problem = ("is missing" if axis is None else
                       f"{axis!r} is in fixed, not grid (one value: nothing to compare)"
                       if isinstance(axis, str) and axis in fixed else
                       f"{axis!r} is not a grid axis")
            raise err(axis_key, f"{problem}; allowed: grid axes with >= 2 values: {axes}")
        if len(grid[axis]) < 2:
            raise err(axis_key, f"{axis!r} has a single value in grid: nothing to compare; "
                      f"allowed: grid axes with >= 2 values: {axes}")
    direction = raw.get("direction")
    if "direction" in takes and direction not in ("increasing", "decreasing"):
        raise err("direction", f"{direction!r} is not allowed; allowed: ['increasing', "
                  "'decreasing']")
    better = raw.get("better")
    if "better" in takes:
        values = grid[raw["axis"]]
        try:
            typed = _coerce(hints[raw["axis"]], better)
        except _Invalid:
            typed = ...
        if typed is ... or typed not in values:
            raise err("better", f"{better!r} is not a value of {raw['axis']}; allowed: {values}")
        better = values[values.index(typed)]
    if "metric" in raw and "metrics" in raw:
        raise err("metrics", "given together with metric; allowed: metric (one) or metrics "
                  "(a list), not both")
    if "metric" in raw:
        names = [raw["metric"]]
    elif "metrics" in raw:
        names = raw["metrics"]
        if not isinstance(names, list) or not names:
            raise err("metrics", f"{_what(names) if names else 'is empty'}; allowed: a "
                      f"non-empty list of metrics of the task: {list(metrics)}")
    else:
        names = []
    key = "metric" if "metric" in raw else "metrics"
    for i, m in enumerate(names):
        if not isinstance(m, str) or m not in metrics:
            raise err(key, f"{m!r} is not a metric of the task; allowed: {list(metrics)}")
        if m in names[:i]:
            raise err(key, f"{m!r} is given twice; allowed: distinct metrics")
    return Claim(kind=kind, text=text, axis=raw["axis"], direction=direction, better=better,
                 effect_axis=raw.get("effect_axis"), metrics=tuple(names))
