"""Experiment definitions: one YAML file per experiment in ``search_spaces/``, loaded and checked.

A file is the only place an experiment is defined (grid axes, fixed settings, LR range, trials
per cell, ASHA, finals, hypothesis). Everything is validated here, before Ray starts: a bad file
fails with ``<file>:<line>: <field>: <what is wrong>; allowed: ...``, and every cell's
``RunConfig`` is built once so an impossible value in any cell is caught up front.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from data.registry import metric_names
from tuner.config import RunConfig, replace

SEARCH_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
CLAIM_KINDS = ("trend", "compare", "effect_trend", "effect_compare")


class SearchSpaceError(ValueError):
    """A malformed or impossible experiment file; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One checkable part of the hypothesis, evaluated on the finals' ``metric`` (lower = better).

    - trend: ``metric`` moves with ``axis`` in ``direction`` (increasing | decreasing).
    - compare: ``better`` (a value of ``axis``) scores lower than the other values.
    - effect_trend: the effect of ``effect_axis`` (metric at its largest value minus at its
      smallest) moves with ``axis`` in ``direction``.
    - effect_compare: the effect of ``effect_axis`` is smaller when ``axis == better``.

    ``metric`` (optional, default the experiment's ``asha.metric``) judges the claim on another
    reported metric, e.g. ``eval/grokking_step`` when the search ranks runs by train accuracy.
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
    max_concurrent: int
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

    def cell_config(self, cell: str, **extra) -> RunConfig:
        return replace(self.base, **self.cells()[cell], **extra)


def cell_id(overrides: dict[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        short = key.split(".")[-1].replace("_val", "").replace("_size", "")
        parts.append(f"{short}={value}")
    return re.sub(r"[^A-Za-z0-9=.,_-]", "_", ",".join(parts))


class _Lines:
    """Line numbers of every key path in a YAML document, for error messages."""

    def __init__(self, text: str, path: Path):
        self.path = path
        self.lines: dict[tuple, int] = {}
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark else 1
            raise SearchSpaceError(f"{path}:{line}: not valid YAML: {e}") from None
        if root is not None:
            self._walk(root, ())

    def _walk(self, node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[prefix + (key.value,)] = key.start_mark.line + 1
                self._walk(value, prefix + (key.value,))

    def error(self, keys: tuple, msg: str) -> SearchSpaceError:
        for n in range(len(keys), 0, -1):
            if keys[:n] in self.lines:
                return SearchSpaceError(f"{self.path}:{self.lines[keys[:n]]}: "
                                        f"{'.'.join(map(str, keys))}: {msg}")
        return SearchSpaceError(f"{self.path}:1: {'.'.join(map(str, keys))}: {msg}")


_TOP = {"name", "hypothesis", "claims", "grid", "fixed", "search", "asha", "finals",
        "resources", "wandb", "smoke"}
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
_TOP_FIELDS = ("task",)  # undotted RunConfig fields a file may set in fixed/grid


def known() -> list[str]:
    return sorted(p.stem for p in SEARCH_SPACES.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """An experiment name (file in search_spaces/) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = SEARCH_SPACES / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    raise SearchSpaceError(f"unknown experiment {name_or_path!r}; known experiments: "
                           f"{', '.join(known())} (files in {SEARCH_SPACES})")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and k != "grid" else v
    return out


def load(name_or_path: str, smoke: bool = False) -> Experiment:
    """Loads and validates an experiment; ``smoke`` applies the file's ``smoke:`` overrides."""
    path = resolve(name_or_path)
    text = path.read_text()
    lines = _Lines(text, path)
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise lines.error(("<top>",), "the file must be a mapping of sections")
    for key in raw:
        if key not in _TOP:
            raise lines.error((key,), f"unknown section; allowed: {sorted(_TOP)}")
    for section, allowed in _SECTIONS.items():
        smoke_body = (raw.get("smoke") or {}).get(section) if section != "smoke" else None
        for where, body in (((section,), raw.get(section)), (("smoke", section), smoke_body)):
            if body is None:
                continue
            if not isinstance(body, dict):
                raise lines.error(where, "must be a mapping")
            if section in ("fixed", "grid"):
                continue
            for key in body:
                if key not in allowed:
                    raise lines.error((*where, key), f"unknown field; allowed: {sorted(allowed)}")
    for key in ("name", "hypothesis", "grid", "search", "asha", "finals"):
        if key not in raw:
            raise lines.error((key,), "required section is missing")
    cfg = _merge(raw, raw.get("smoke") or {}) if smoke else raw

    def source(*keys: str) -> tuple:
        """Where a (merged) field was written: under ``smoke:`` if overridden there."""
        if smoke and ("smoke", *keys) in lines.lines:
            return ("smoke", *keys)
        return keys

    return _build(cfg, lines, path, source, smoke)


def _build(cfg: dict, lines: _Lines, path: Path, source, smoke: bool) -> Experiment:
    def get(section: str, key: str, kind, check=None, allowed=""):
        where = source(section, key)
        value = cfg[section].get(key)
        if value is None:
            raise lines.error(where, "is required")
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise lines.error(where, f"{value!r} is not a {kind.__name__}") from None
        if check is not None and not check(value):
            raise lines.error(where, f"{value!r} is not allowed; allowed: {allowed}")
        return value

    base = _apply(RunConfig(), cfg.get("fixed") or {}, lines, "fixed", source)
    grid = cfg["grid"]
    if not isinstance(grid, dict) or not grid:
        raise lines.error(source("grid"), "must map dotted config fields to lists of values")
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise lines.error(source("grid", axis), "must be a non-empty list of values")
        for v in values:
            _apply(base, {axis: v}, lines, "grid", source)
    lr_low = get("search", "lr_low", float, lambda v: v > 0, "> 0")
    lr_high = get("search", "lr_high", float, lambda v: v > lr_low, f"> lr_low={lr_low}")
    seeds = cfg["finals"].get("seeds")
    if not isinstance(seeds, list) or len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise lines.error(source("finals", "seeds"),
                          f"{seeds!r}; allowed: a list of at least 2 distinct integer seeds")
    steps = base.train.steps
    if steps % base.train.eval_every:
        raise lines.error(source("fixed", "train.steps"), f"train.steps={steps} must be a "
                          f"multiple of train.eval_every={base.train.eval_every} (ASHA compares "
                          "trials at evaluations)")
    resources = cfg.get("resources") or {}
    metrics = metric_names(base.task)  # what this experiment's task reports
    return Experiment(
        name=str(cfg["name"]) + ("-smoke" if smoke else ""),
        path=path,
        hypothesis=str(cfg["hypothesis"]).strip(),
        claims=tuple(_claim(c, i, lines, grid, metrics)
                     for i, c in enumerate(cfg.get("claims") or [])),
        base=base,
        grid=grid,
        lr_low=lr_low,
        lr_high=lr_high,
        trials_per_cell=get("search", "trials_per_cell", int, lambda v: v >= 1, ">= 1"),
        max_concurrent=get("search", "max_concurrent", int, lambda v: v >= 1, ">= 1")
        if "max_concurrent" in cfg["search"] else 2,
        metric=get("asha", "metric", str, lambda v: v in metrics, list(metrics)),
        mode=get("asha", "mode", str, lambda v: v in ("min", "max"), ["min", "max"]),
        grace_period=get("asha", "grace_period", int, lambda v: 1 <= v <= steps,
                         f"1..train.steps={steps}"),
        reduction_factor=get("asha", "reduction_factor", float, lambda v: v > 1, "> 1"),
        seeds=tuple(int(s) for s in seeds),
        cpus_per_trial=float(resources.get("cpus_per_trial", 1)),
        gpus_per_trial=float(resources.get("gpus_per_trial", 0)),
        wandb_project=str((cfg.get("wandb") or {}).get("project", "lds-tuner")),
    )


def _apply(base: RunConfig, overrides: dict, lines: _Lines, section: str, source
           ) -> RunConfig:
    """Applies dotted overrides, turning any config error into a file/line/field error."""
    if not isinstance(overrides, dict):
        raise lines.error(source(section), "must map dotted config fields (e.g. "
                          "data.lambda_val) to values")
    for key, value in overrides.items():
        where = source(section, key)
        head, _, rest = str(key).partition(".")
        sub = getattr(base, head, None)
        if not rest and head in _TOP_FIELDS:  # e.g. `task: bigram` in fixed
            try:
                base = replace(base, **{head: value})
            except (ValueError, TypeError) as e:
                raise lines.error(where, str(e)) from None
            continue
        if not rest or not dataclasses.is_dataclass(sub):
            groups = [f.name for f in dataclasses.fields(base)
                      if dataclasses.is_dataclass(getattr(base, f.name))]
            raise lines.error(where, f"unknown field; allowed: <group>.<field> with group in "
                              f"{groups}")
        fields = {f.name for f in dataclasses.fields(sub)}
        if rest not in fields:
            raise lines.error(where, f"unknown field; allowed in {head}: {sorted(fields)}")
        try:
            base = replace(base, **{key: tuple(value) if isinstance(value, list) else value})
        except (ValueError, TypeError) as e:
            raise lines.error(where, str(e)) from None
    return base


def _claim(raw: Any, index: int, lines: _Lines, grid: dict, metrics: tuple[str, ...]) -> Claim:
    where = ("claims",)
    if not isinstance(raw, dict):
        raise lines.error(where, f"claim {index} must be a mapping")
    kind = raw.get("kind")
    if kind not in CLAIM_KINDS:
        raise lines.error(where, f"claim {index}: kind={kind!r}; allowed: {list(CLAIM_KINDS)}")
    for axis_key in ("axis", "effect_axis"):
        axis = raw.get(axis_key)
        needed = axis_key == "axis" or kind.startswith("effect")
        if needed and axis not in grid:
            raise lines.error(where, f"claim {index}: {axis_key}={axis!r}; allowed: grid axes "
                              f"{list(grid)}")
    if kind.endswith("trend") and raw.get("direction") not in ("increasing", "decreasing"):
        raise lines.error(where, f"claim {index}: direction={raw.get('direction')!r}; allowed: "
                          "['increasing', 'decreasing']")
    if kind.endswith("compare") and raw.get("better") not in grid[raw["axis"]]:
        raise lines.error(where, f"claim {index}: better={raw.get('better')!r}; allowed: "
                          f"{grid[raw['axis']]}")
    if raw.get("metric") is not None and raw["metric"] not in metrics:
        raise lines.error(where, f"claim {index}: metric={raw['metric']!r}; allowed: "
                          f"{list(metrics)}")
    return Claim(kind=kind, text=str(raw.get("text", kind)), axis=raw["axis"],
                 direction=raw.get("direction"), better=raw.get("better"),
                 effect_axis=raw.get("effect_axis"),
                 metrics=tuple(raw.get("metrics") or ([raw["metric"]] if raw.get("metric")
                                                      else [])))
