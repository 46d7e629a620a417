"""Verdicts on an experiment's claims: the statistics, apart from how the report renders them.

What a verdict rests on (SPEC section 6, "What a verdict may rest on"):

- **Replicates.** Per cell and metric, the finished final seeds; each seed has its own system,
  init and data (``tuner.core.seeds``), so the spread covers the system draw. A cell's standard
  error is sd / sqrt(n) with n - 1 degrees of freedom; a cell with fewer than 2 finished seeds
  has none and is *unusable* (as is a cell whose seeds all diverged, or whose finished seeds
  have fewer than 2 finite values of a metric the claims read).
- **Difficulty, not the metric's sign.** Claims speak of difficulty: the *badness* of a metric
  is the metric itself where lower is better and minus it where higher is better, so a claim
  can be judged on ``nmse_info`` (lower is better) and ``skill_info`` (higher is better) alike.
  ``trend`` ``direction`` is the way badness moves as the axis grows; ``compare`` ``better``
  is the axis value with the lowest badness.
- **Every statistic is a contrast of cell means** (:class:`Contrast`): sum c_i mean_i, standard
  error sqrt(sum c_i^2 se_i^2), degrees of freedom by Welch-Satterthwaite. Fixed coefficients
  (they do not depend on the data) keep the test honest with 3 seeds a cell, where a cell's
  variance estimate has 2 degrees of freedom; inverse-variance weights would trust a cell that
  scattered little by chance (bench/README.md, "Verdict power", measures both).
- **Series.** Along the claim's axis, per value: the mean over the other axes' cells.
- **Effect of ``effect_axis``** at a value of the claim's axis: the least-squares slope of the
  badness on the effect axis' position (log2 of a positive numeric axis, else its rank) over
  *every* value of the effect axis (each the mean over the remaining axes), times the span of
  positions: the change from its smallest to its largest value that the line through all
  values implies (with two values: their difference).
- **A difference counts** when |d| > t(0.975, df) * se(d) (two-sided 5%, Welch df).
  ``trend``: "supported" when the end-to-end change counts, in the claimed direction, and the
  series is monotone enough (Spearman rho >= 0.7 that way; with two values the change alone);
  "contradicted" the same the other way; "not supported" when the change counts but the
  series is not monotone; else "inconclusive". ``compare``: "supported" when every other value
  is worse than ``better`` by a difference that counts, "contradicted" when every one is
  better, else "inconclusive".
- **Several metrics: the first decides, the others must not contradict it.** The first metric
  a claim names (its ``metrics:`` order; exp1-exp4 list ``nmse_info``, the model's shortfall
  against what it could know, before ``skill_info``, a ratio of two small numbers where little
  is learnable: SPEC section 2) gives the verdict by the rules above. It stands only when no
  other metric *contradicts* it at the same level: none of that metric's contrasts counts
  (two-sided 5%) the opposite way (against the claim when the first metric supports it, for
  it when the first contradicts it); otherwise the claim is "inconclusive" and the evidence
  names the metric. The other metrics only remove verdicts, so the false-verdict rate is at
  most the first metric's (<= 5%) and the power that of the first metric less the rare
  contradictions; requiring every metric to count on its own (an intersection-union test,
  the rule before issue 33) held the claim to its noisiest metric's power
  (bench/README.md, "Verdict power").
- **Learning check.** A cell is *learned* when the one-sided 95% lower bound of its mean on the
  task's check metric (``LEARNING_CHECK``, e.g. ``skill_info``: 0 is the zero predictor)
  exceeds the floor. Cells that are unusable or not learned are left out (and listed): for
  ``trend`` / ``compare`` the values of the claim's axis holding one; for an effect claim
  either those or the values of the effect axis holding one, whichever keeps more cells (so
  the slopes still compare like with like). If fewer than two values remain on an axis the
  claim compares along, the claim is "inconclusive".

Written here rather than taken from a library because the rule is the experiment protocol
itself (Welch-Satterthwaite over averaged cells, the learning check); scipy supplies the t
quantiles. ``tests/test_verdicts.py`` checks the judge on inputs whose answer is known.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from tuner.service.objective import Objective

ALPHA = 0.05  # two-sided level of a difference; the learning check is one-sided at ALPHA
MIN_RHO = 0.7  # Spearman rho a trend needs besides a significant end-to-end change
DECISIVE = ("supported", "contradicted")


@dataclasses.dataclass(frozen=True)
class Contrast:
    """sum_i coef_i * mean_i over cells, with what its power depends on (``report.power``)."""

    label: str  # what it measures, e.g. "change from 0.68 to 0.96"
    coef: dict[str, float]  # cell -> coefficient
    estimate: float
    se: float
    df: float
    sd: dict[str, float]  # cell -> seed sd of the metric (power needs the spread, not the se)
    n: dict[str, int]  # cell -> finite seeds

    def counts(self) -> bool:
        return counts(self.estimate, self.se, self.df)


@dataclasses.dataclass(frozen=True)
class MetricVerdict:
    metric: str
    mode: str  # min | max
    verdict: str
    evidence: str
    tests: tuple[Contrast, ...] = ()  # the contrasts the verdict needs to count (all of them)
    direction: int = 1  # +1: the claim expects the tests' estimates > 0


@dataclasses.dataclass(frozen=True)
class ClaimVerdict:
    verdict: str
    per_metric: tuple[MetricVerdict, ...]
    dropped: dict[Any, str]  # claim-axis value left out -> why (its cells unusable)
    dropped_effect: dict[Any, str] = dataclasses.field(default_factory=dict)  # effect-axis ones
    axes: tuple[str, str | None] = ("", None)  # (axis, effect_axis): names for the evidence
    against: tuple[str, ...] = ()  # metrics that contradict the first one's decisive verdict

    def evidence(self) -> str:
        parts = [f"`{m.metric}` ({'higher' if m.mode == 'max' else 'lower'} is better"
                 f"{', decides' if i == 0 and len(self.per_metric) > 1 else ''}): "
                 f"{m.verdict}; {m.evidence}" for i, m in enumerate(self.per_metric)]
        if self.against:
            first = self.per_metric[0]
            parts.insert(0, f"{first.verdict} on `{first.metric}`, but "
                         + ", ".join(f"`{m}`" for m in self.against)
                         + " contradicts it (a difference beyond its 95% threshold the other "
                         "way): inconclusive")
        left = [f"{axis}={v} ({why})" for axis, dropped in zip(
            self.axes, (self.dropped, self.dropped_effect), strict=True)
            for v, why in dropped.items()]
        if left:
            parts.append("left out: " + "; ".join(left))
        return ". ".join(parts)


def finished(finals: pd.DataFrame) -> pd.DataFrame:
    """The final runs that did not diverge."""
    if "diverged" not in finals:
        return finals
    return finals[~finals["diverged"].astype("boolean").fillna(False).astype(bool)]


def cell_table(cells: dict[str, dict[str, Any]], finals: pd.DataFrame, metric: str
               ) -> pd.DataFrame:
    """Per cell: grid values, mean, sd, n, se, df of ``metric`` over its finished seeds'
    finite values, ``n_runs`` (all final rows of the cell, diverged included) and ``n_done``
    (finished rows, finite or not). Every cell of the grid has a row, also one without any
    finished seed (mean NaN)."""
    ok = finished(finals)
    done = ok["cell"].value_counts() if "cell" in ok else pd.Series(dtype=int)
    if metric in ok:
        vals = ok[["cell", metric]].astype({metric: float})
        vals = vals[np.isfinite(vals[metric])].groupby("cell")[metric]
        mean, sd, n = vals.mean(), vals.std(ddof=1), vals.count()
    else:
        mean = sd = n = pd.Series(dtype=float)
    runs = finals["cell"].value_counts() if "cell" in finals else pd.Series(dtype=int)
    rows = []
    for cell, over in cells.items():
        k = int(n.get(cell, 0))
        sd_k = float(sd.get(cell, math.nan)) if k >= 2 else math.nan
        rows.append({"cell": cell, **over, "mean": float(mean.get(cell, math.nan)),
                     "sd": sd_k, "n": k, "se": sd_k / math.sqrt(k) if k >= 2 else math.nan,
                     "df": k - 1, "n_runs": int(runs.get(cell, 0)),
                     "n_done": int(done.get(cell, 0))})
    return pd.DataFrame(rows)


def usability(table: pd.DataFrame, check_table: pd.DataFrame | None, floor: float | None,
              metric_tables: dict[str, pd.DataFrame] | None = None) -> dict[str, str]:
    """Cell -> why it cannot carry a verdict (absent: it can). ``table``: any
    :func:`cell_table` (its ``n_done`` and ``n_runs`` count the runs); ``check_table``: the
    one of the task's learning-check metric (higher is better); ``metric_tables``: those of
    every metric a claim reads. A cell whose finished seeds lack 2 finite values of any of
    these is left out of every claim, whichever metrics a claim names: a NaN in the middle of
    an axis would otherwise drop out of one metric's series silently."""
    why: dict[str, str] = {}
    for row in table.itertuples():
        done = getattr(row, "n_done", row.n)
        if done == 0:
            why[row.cell] = "every seed diverged" if row.n_runs else "no final runs"
        elif done < 2:
            why[row.cell] = "one finished seed: no standard error"
    named = dict(metric_tables or {})
    if check_table is not None:
        named.setdefault("learning check", check_table)
    for metric, t in named.items():
        for row in t.itertuples():
            done = getattr(row, "n_done", row.n)
            if row.cell not in why and row.n < 2:
                why[row.cell] = (f"{done - row.n} of {done} finished seeds without a finite "
                                 f"{metric}")
    if check_table is not None and floor is not None:
        for row in check_table.itertuples():
            if row.cell in why:
                continue
            lower = row.mean - stats.t.ppf(1 - ALPHA, row.df) * row.se
            if not lower > floor:
                why[row.cell] = (f"not clearly better than the trivial predictor (mean "
                                 f"{row.mean:.3g}, 95% lower bound {lower:.3g} <= {floor:g})")
    return why


def _by_cell(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return table.set_index("cell")[["mean", "se", "df", "sd", "n"]].to_dict("index")


def contrast(table: pd.DataFrame | dict, coef: dict[str, float], label: str = "") -> Contrast:
    """The contrast ``coef`` (cell -> coefficient) of ``table``'s cell means (a
    :func:`cell_table`, or its rows by cell as :func:`_by_cell` gives them)."""
    rows = _by_cell(table) if isinstance(table, pd.DataFrame) else table
    total = den = estimate = 0.0
    for cell, c in coef.items():
        r = rows[cell]
        var = c**2 * r["se"] ** 2
        total += var
        den += var**2 / max(r["df"], 1) if var > 0 else 0.0
        estimate += c * r["mean"]
    return Contrast(label, dict(coef), float(estimate), math.sqrt(total),
                    total**2 / den if den > 0 else math.inf,
                    {cell: float(rows[cell]["sd"]) for cell in coef},
                    {cell: int(rows[cell]["n"]) for cell in coef})


def level_coefs(table: pd.DataFrame, axis: str) -> dict[Any, dict[str, float]]:
    """Per value of ``axis`` (sorted): the mean over the other axes' cells."""
    return {v: {c: 1.0 / len(g) for c in g["cell"]}
            for v, g in table.groupby(axis, sort=True)}


def positions(values: list) -> np.ndarray:
    """Where an effect axis' values lie on the slope's x axis: log2 of positive numbers (patch
    sizes, dim_y, lambda: the grids are geometric), else the rank in sorted order."""
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.number) and (arr > 0).all():
        return np.log2(arr.astype(float))
    return np.arange(len(values), dtype=float)


def effect_coefs(table: pd.DataFrame, effect_axis: str, axis: str
                 ) -> dict[Any, dict[str, float]]:
    """Per value of ``axis``: the coefficients of the least-squares slope of badness on the
    effect axis' :func:`positions` (each value the mean over the remaining axes), scaled to
    the change from its smallest to its largest value."""
    out = {}
    for value, group in table.groupby(axis, sort=True):
        levels = sorted(group[effect_axis].unique())
        x = positions(levels)
        dx = x - x.mean()
        scale = (x.max() - x.min()) / float(dx @ dx)
        coef = {}
        for e, d in zip(levels, dx, strict=True):
            cells = group.loc[group[effect_axis] == e, "cell"]
            coef.update({c: scale * d / len(cells) for c in cells})
        out[value] = coef
    return out


def counts(diff: float, se: float, df: float) -> bool:
    """Whether a difference exceeds its two-sided (1 - ALPHA) t threshold."""
    if not (math.isfinite(diff) and math.isfinite(se)):
        return False
    quantile = stats.t.ppf(1 - ALPHA / 2, df) if math.isfinite(df) else stats.norm.ppf(
        1 - ALPHA / 2)
    return abs(diff) > quantile * se + 1e-12 * (1.0 + abs(diff))


def coef_difference(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """The contrast ``a - b`` of two linear combinations of cell means (cell -> weight)."""
    out = dict(a)
    for cell, c in b.items():
        out[cell] = out.get(cell, 0.0) - c
    return out


def _fmt(levels: dict[Any, Contrast]) -> str:
    return ", ".join(f"{v}: {s.estimate:.4g}±{s.se:.2g}" for v, s in levels.items())


def _trend(table: pd.DataFrame, coefs: dict[Any, dict[str, float]], direction: str
           ) -> tuple[str, str, tuple[Contrast, ...]]:
    table = _by_cell(table)
    levels = {v: contrast(table, c) for v, c in coefs.items()}
    values = list(levels)
    ys = np.array([s.estimate for s in levels.values()])
    first, last = values[0], values[-1]
    change = contrast(table, coef_difference(coefs[last], coefs[first]),
                      f"change from {first} to {last}")
    if len(values) > 2:
        rho = pd.Series(np.asarray(values, dtype=float)).rank().corr(pd.Series(ys).rank())
        rho = 0.0 if not math.isfinite(rho) else float(rho)
    else:
        rho = math.copysign(1.0, change.estimate) if change.estimate else 0.0
    sign = 1 if direction == "increasing" else -1
    evidence = (f"per value ({_fmt(levels)}); Spearman rho {rho:+.2f}; end-to-end change "
                f"{change.estimate:+.4g} ± {change.se:.2g} (Welch df {change.df:.3g})")
    if not change.counts():
        return ("inconclusive", evidence + ": the change does not exceed its 95% threshold",
                (change,))
    if sign * change.estimate > 0 and sign * rho >= MIN_RHO:
        return "supported", evidence, (change,)
    if sign * change.estimate < 0 and sign * rho <= -MIN_RHO:
        return "contradicted", evidence, (change,)
    return "not supported", evidence + ": not monotone in the claimed direction", (change,)


def _compare(table: pd.DataFrame, coefs: dict[Any, dict[str, float]], better: Any
             ) -> tuple[str, str, tuple[Contrast, ...]]:
    if better not in coefs:
        return "inconclusive", f"{better} has no usable cells", ()
    table = _by_cell(table)
    b = contrast(table, coefs[better])
    gaps = tuple(contrast(table, coef_difference(c, coefs[better]), f"{v} - {better}")
                 for v, c in coefs.items() if v != better)
    evidence = f"{better}: {b.estimate:.4g}±{b.se:.2g} vs " + ", ".join(
        f"{g.label.split(' - ')[0]}: gap {g.estimate:+.3g}±{g.se:.2g}" for g in gaps)
    if gaps and all(g.estimate > 0 and g.counts() for g in gaps):
        return "supported", evidence, gaps
    if gaps and all(g.estimate < 0 and g.counts() for g in gaps):
        return "contradicted", evidence, gaps
    return ("inconclusive", evidence + ": not every gap exceeds its 95% threshold the same way",
            gaps)


def _bad_values(table: pd.DataFrame, axis: str, unusable: dict[str, str]) -> dict[Any, str]:
    out = {}
    for value, group in table.groupby(axis, sort=True):
        bad = [f"{c}: {unusable[c]}" for c in group["cell"] if c in unusable]
        if bad:
            out[value] = "; ".join(bad)
    return out


def left_out(claim, table: pd.DataFrame, unusable: dict[str, str]
             ) -> tuple[dict[Any, str], dict[Any, str]]:
    """(claim-axis values, effect-axis values) a claim leaves out for their unusable cells."""
    by_axis = _bad_values(table, claim.axis, unusable)
    if not claim.kind.startswith("effect") or not by_axis:
        return by_axis, {}
    by_effect = _bad_values(table, claim.effect_axis, unusable)
    keep_axis = (~table[claim.axis].isin(list(by_axis))).sum()
    keep_effect = (~table[claim.effect_axis].isin(list(by_effect))).sum()
    return (by_axis, {}) if keep_axis >= keep_effect else ({}, by_effect)


def judge(claim, tables: dict[str, pd.DataFrame], modes: dict[str, str],
          unusable: dict[str, str]) -> ClaimVerdict:
    """The verdict on ``claim`` from per-metric :func:`cell_table` s (``modes``: min | max).

    ``unusable``: cell -> reason (:func:`usability`); see :func:`left_out` for what a claim
    then leaves out.
    """
    first = next(iter(tables.values()))
    dropped, dropped_effect = left_out(claim, first, unusable)
    keep = (~first[claim.axis].isin(list(dropped))).to_numpy().copy()
    if claim.kind.startswith("effect"):
        keep &= (~first[claim.effect_axis].isin(list(dropped_effect))).to_numpy()
    short = [a for a in ([claim.axis] + ([claim.effect_axis] if claim.kind.startswith("effect")
                                         else [])) if first.loc[keep, a].nunique() < 2]
    sign = 1
    if claim.kind.endswith("trend"):
        sign = 1 if claim.direction == "increasing" else -1
    per_metric = []
    for metric, table in tables.items():
        objective = Objective(metric, modes[metric])  # badness = -score: larger is worse
        t = table[keep].assign(mean=lambda d, o=objective: -o.score(d["mean"]))
        if short:
            verdict, evidence, tests = ("inconclusive", f"fewer than 2 values of {short[0]} "
                                        "usable", ())
        else:
            coefs = (effect_coefs(t, claim.effect_axis, claim.axis)
                     if claim.kind.startswith("effect") else level_coefs(t, claim.axis))
            if claim.kind.startswith("effect"):
                evidence_of = (f"effect of {claim.effect_axis} (slope over "
                               f"{t[claim.effect_axis].nunique()} values x span) ")
            else:
                evidence_of = "badness "
            verdict, evidence, tests = (_trend(t, coefs, claim.direction)
                                        if claim.kind.endswith("trend")
                                        else _compare(t, coefs, claim.better))
            evidence = evidence_of + evidence
        per_metric.append(MetricVerdict(metric, modes[metric], verdict, evidence, tests, sign))
    verdict, against = combine(per_metric)
    return ClaimVerdict(verdict, tuple(per_metric), dropped, dropped_effect,
                        (claim.axis, claim.effect_axis), against)


def contradicts(m: MetricVerdict, verdict: str) -> bool:
    """Whether metric ``m`` contradicts a decisive ``verdict`` at the judge's level: one of its
    contrasts counts the opposite way (against the claim for "supported", for it for
    "contradicted")."""
    expected = m.direction if verdict == "supported" else -m.direction
    return any(t.counts() and t.estimate * expected < 0 for t in m.tests)


def combine(per_metric: list[MetricVerdict]) -> tuple[str, tuple[str, ...]]:
    """(the claim's verdict, the metrics that contradict its first metric's decisive verdict):
    the first metric decides, a decisive verdict stands only if no other metric contradicts
    it (:func:`contradicts`)."""
    first, *others = per_metric
    if first.verdict not in DECISIVE:
        return first.verdict, ()
    against = tuple(m.metric for m in others if contradicts(m, first.verdict))
    return ("inconclusive" if against else first.verdict), against
