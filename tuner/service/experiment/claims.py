"""The claims of an experiment file: checkable parts of its hypothesis (judged by
tuner.service.report.verdicts)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tuner.service.experiment.lines import Lines, SearchSpaceError
from tuner.service.experiment.values import Invalid, as_number, coerce, what

CLAIM_KINDS = ("trend", "compare", "effect_trend", "effect_compare")

_COMMON_KEYS = {"kind", "text", "axis", "metric", "metrics", "min_effect"}
_CLAIM_KEYS = {  # kind -> the keys it takes
    "trend": _COMMON_KEYS | {"direction"},
    "compare": _COMMON_KEYS | {"better"},
    "effect_trend": _COMMON_KEYS | {"direction", "effect_axis"},
    "effect_compare": _COMMON_KEYS | {"better", "effect_axis"},
}

ALL_CLAIM_KEYS = ["kind", "text", "axis", "direction", "better", "effect_axis", "metric",
                   "metrics", "min_effect"]


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
    ``eval/grokking_step`` when the search ranks runs by train accuracy. Their order is the
    rule: the first decides the verdict, the others must not contradict it
    (``report.verdicts.combine``), so the best-justified metric goes first.

    ``min_effect`` (metric -> size, in the metric's units; the key "" stands for the claim's
    only metric) is the smallest true effect worth finding: the report of an inconclusive
    claim says how many finals seeds would find it with 80% power. Its size is measured like
    the claim's statistic: the end-to-end change (trend), the gap to ``better`` (compare),
    the change of the effect between the claim axis' ends or to ``better`` (effect claims).
    """

    kind: str
    text: str
    axis: str
    direction: str | None = None
    better: Any = None
    effect_axis: str | None = None
    metrics: tuple[str, ...] = ()
    min_effect: tuple[tuple[str, float], ...] = ()

    def min_effect_of(self, metric: str) -> float | None:
        """The declared minimal effect on ``metric`` (None: none declared)."""
        sizes = dict(self.min_effect)
        return sizes.get(metric, sizes.get("") if len(self.metrics) <= 1 else None)


def _min_effect(raw: Any, names: list, err) -> tuple[tuple[str, float], ...]:
    """``min_effect:`` a number > 0 (a claim on one metric) or metric -> number > 0."""
    if "min_effect" not in raw:
        return ()
    value = raw["min_effect"]
    number = "a finite number > 0 in the metric's units"
    allowed = (f"{number}, or a mapping of the claim's metrics {names} to such numbers"
               if len(names) > 1 else f"{number} (or a mapping {{metric: number}} naming "
               f"{names[0] if names else 'the claim metric'})")

    def size(v: Any, key: str | None) -> float:
        try:
            out = as_number(v, allowed)
        except Invalid as e:
            raise err("min_effect", str(e), key) from None
        if not out > 0:
            raise err("min_effect", f"{v!r} is not allowed; allowed: {allowed}", key)
        return out

    if isinstance(value, dict):
        if not value:
            raise err("min_effect", f"is empty; allowed: {allowed}", None)
        for key in value:
            if key not in names:
                raise err("min_effect", f"{key!r} is not a metric of this claim; allowed: "
                          f"{names or 'a plain number: the claim is judged on asha.metric'}",
                          key)
        return tuple((k, size(v, k)) for k, v in value.items())
    if len(names) > 1:
        raise err("min_effect", f"{what(value)} but the claim names {len(names)} metrics "
                  f"(their units differ); allowed: {allowed}", None)
    return (("", size(value, None)),)


def parse_claim(raw: Any, index: int, lines: Lines, grid: dict, hints: dict, fixed: dict,
           metrics: tuple[str, ...]) -> Claim:
    where = ("claims", index)

    def err(key: str | None, msg: str, sub: str | None = None) -> SearchSpaceError:
        keys = where if key is None else (*where, key)
        return lines.error(keys if sub is None else (*keys, sub), msg)

    if not isinstance(raw, dict):
        raise err(None, f"{what(raw)}; allowed: a mapping with keys {ALL_CLAIM_KEYS}")
    for key in raw:
        if key not in ALL_CLAIM_KEYS:
            raise err(key, f"unknown key; allowed: {ALL_CLAIM_KEYS}")
    kind = raw.get("kind")
    if kind not in CLAIM_KINDS:
        raise err("kind", f"{kind!r} is not a claim kind; allowed: {list(CLAIM_KINDS)}")
    takes = _CLAIM_KEYS[kind]
    for key in raw:
        if key not in takes:
            raise err(key, f"does not apply to kind {kind!r}; allowed: for {kind}, "
                      f"{[k for k in ALL_CLAIM_KEYS if k in takes]}")
    text = raw.get("text", kind)
    if not isinstance(text, str) or not text.strip():
        raise err("text", f"{what(text) if not isinstance(text, str) else 'is empty'}; "
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
            typed = coerce(hints[raw["axis"]], better)
        except Invalid:
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
            raise err("metrics", f"{what(names) if names else 'is empty'}; allowed: a "
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
                 effect_axis=raw.get("effect_axis"), metrics=tuple(names),
                 min_effect=_min_effect(raw, list(names), err))
