"""The grid and fixed settings of an experiment file applied to RunConfig: every cell built and
checked before any cluster work, each error naming the line and field."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Any

from tuner.core.config import RunConfig, replace
from tuner.core.seeds import SEARCH_SEED
from tuner.service.experiment.lines import Lines
from tuner.service.experiment.values import Invalid, coerce, describe, type_hints, what

MAX_CELLS = 10_000  # more grid cells than this is a typo (every cell gets trials_per_cell runs)

_CONFIG_ERRORS = (ValueError, TypeError, ArithmeticError)  # what a config's checks raise

_TOP_FIELDS = ("task",)  # undotted RunConfig fields a file may set in fixed

RESERVED = {
    "train.lr": "set by the learning-rate search; allowed: search.lr_low / search.lr_high",
    "train.seed": "set by the service (finals: finals.seeds; search: SEARCH_SEED="
                  f"{SEARCH_SEED}); allowed: finals.seeds",
}

_NOT_AXES = {  # fields that may be fixed but not a grid axis
    "train.steps": "is the budget, one per experiment (ASHA's max_t); allowed: set it in fixed",
    "task": "decides the metrics, one per experiment; allowed: set it in fixed",
}


def cell_text(over: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in over.items())


def grid_cells(cfg: dict, base: RunConfig, fixed: dict, lines: Lines, source
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
        if axis in RESERVED:
            raise lines.error(where, RESERVED[axis])
        if axis in _NOT_AXES:
            raise lines.error(where, _NOT_AXES[axis])
        if axis in fixed:
            raise lines.error(where, f"is also set in fixed (line "
                              f"{lines.lines.get(source('fixed', axis), '?')}): ambiguous; "
                              "allowed: a field in fixed or in grid, not both")
        hint = hints[axis] = _hint(base, axis, lines, where)
        if not isinstance(values, list) or not values:
            raise lines.error(where, f"{'is an empty list' if values == [] else what(values)}"
                              f"; allowed: a non-empty list of distinct values, each "
                              f"{describe(hint)}")
        typed = []
        for i, v in enumerate(values):
            try:
                v = coerce(hint, v)
            except Invalid as e:
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
            raise lines.error(source("grid"), f"cells {cell_text(ids[cid])} and "
                              f"{cell_text(over)} get the same cell id {cid!r}; allowed: "
                              "values that differ in letters, digits or '.', '_', '-'")
        ids[cid] = over
        try:
            cells.append((over, replace(base, **over)))
        except _CONFIG_ERRORS as e:
            culprit = _culprit(base, over, str(e))
            if culprit is not None:
                raise lines.error(source("grid", culprit), _config_message(e)) from None
            raise lines.error(source("grid"), f"cell {cell_text(over)} is impossible: "
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


def _hint(base: RunConfig, key: Any, lines: Lines, where: tuple) -> Any:
    """The type annotation of a dotted RunConfig field; unknown fields fail naming the allowed."""
    head, _, rest = str(key).partition(".")
    if not rest and head in _TOP_FIELDS:
        return type_hints(RunConfig)[head]
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
    return type_hints(type(sub))[rest]


def apply_fields(base: RunConfig, overrides: dict, lines: Lines, section: str, source
           ) -> RunConfig:
    """Applies dotted overrides (each type-checked), turning any config error into a
    file/line/field error. All are applied at once, so their order in the file does not
    matter (``model.tie_embeddings`` may come before ``model.head``)."""
    typed = {}
    for key, value in overrides.items():
        where = source(section, key)
        hint = _hint(base, key, lines, where)
        try:
            typed[key] = coerce(hint, value)
        except Invalid as e:
            raise lines.error(where, str(e)) from None
    try:
        return replace(base, **typed)
    except _CONFIG_ERRORS as e:
        culprit = _culprit(base, typed, str(e))
        if culprit is not None:
            raise lines.error(source(section, culprit), _config_message(e)) from None
        raise lines.error(source(section), "these settings together are impossible: "
                          f"{_config_message(e)}") from None

def cell_id(overrides: dict[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        short = key.split(".")[-1].replace("_val", "").replace("_size", "")
        parts.append(f"{short}={value}")
    return re.sub(r"[^A-Za-z0-9=.,_-]", "_", ",".join(parts))
