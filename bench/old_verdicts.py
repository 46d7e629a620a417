"""The judge as it was before issue 26 (effects from the two ends of the effect axis only),
kept verbatim below this note as the baseline of ``bench/power_table.py``; not used by the
service."""


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
class MetricVerdict:
    metric: str
    mode: str  # min | max
    verdict: str
    evidence: str


@dataclasses.dataclass(frozen=True)
class ClaimVerdict:
    verdict: str
    per_metric: tuple[MetricVerdict, ...]
    dropped: dict[Any, str]  # axis value left out -> why (its cells unusable or not learned)

    def evidence(self) -> str:
        parts = [f"`{m.metric}` ({'higher' if m.mode == 'max' else 'lower'} is better): "
                 f"{m.verdict}; {m.evidence}" for m in self.per_metric]
        if self.dropped:
            parts.append("left out: " + "; ".join(f"{v} ({why})"
                                                  for v, why in self.dropped.items()))
        return ". ".join(parts)


def finished(finals: pd.DataFrame) -> pd.DataFrame:
    """The final runs that did not diverge."""
    if "diverged" not in finals:
        return finals
    return finals[~finals["diverged"].astype("boolean").fillna(False).astype(bool)]


def cell_table(cells: dict[str, dict[str, Any]], finals: pd.DataFrame, metric: str
               ) -> pd.DataFrame:
    """Per cell: grid values, mean, sd, n, se, df of ``metric`` over its finished seeds, and
    ``n_runs`` (all final rows of the cell, diverged included). Every cell of the grid has a
    row, also one without any finished seed (mean NaN)."""
    ok = finished(finals)
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
                     "df": k - 1, "n_runs": int(runs.get(cell, 0))})
    return pd.DataFrame(rows)


def usability(table: pd.DataFrame, check_table: pd.DataFrame | None, floor: float | None
              ) -> dict[str, str]:
    """Cell -> why it cannot carry a verdict (absent: it can). ``check_table`` is the
    :func:`cell_table` of the task's learning-check metric (higher is better)."""
    why: dict[str, str] = {}
    for row in table.itertuples():
        if row.n == 0:
            why[row.cell] = "every seed diverged" if row.n_runs else "no final runs"
        elif row.n < 2:
            why[row.cell] = "one finished seed: no standard error"
    if check_table is not None and floor is not None:
        for row in check_table.itertuples():
            if row.cell in why or row.n < 2:
                continue
            if not math.isfinite(row.se):
                why[row.cell] = "no standard error"
                continue
            lower = row.mean - stats.t.ppf(1 - ALPHA, row.df) * row.se
            if not lower > floor:
                why[row.cell] = (f"not clearly better than the trivial predictor (mean "
                                 f"{row.mean:.3g}, 95% lower bound {lower:.3g} <= {floor:g})")
    return why


def _combine(group: pd.DataFrame) -> tuple[float, float, float]:
    """Mean of cell means, its standard error and Welch-Satterthwaite degrees of freedom."""
    k = len(group)
    var = (group["se"] ** 2).to_numpy() / k**2
    total = var.sum()
    df_den = np.sum(var**2 / group["df"].clip(lower=1).to_numpy())
    df = total**2 / df_den if df_den > 0 else math.inf
    return float(group["mean"].mean()), math.sqrt(total), df


def series(table: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Per value of ``axis`` (sorted): mean over the other axes, se, df."""
    rows = [dict(zip(("mean", "se", "df"), _combine(g), strict=True), value=v)
            for v, g in table.groupby(axis, sort=True)]
    return pd.DataFrame(rows, columns=["value", "mean", "se", "df"])


def effect_series(table: pd.DataFrame, effect_axis: str, axis: str) -> pd.DataFrame:
    """Per value of ``axis``: badness at the largest ``effect_axis`` minus at its smallest."""
    lo_v, hi_v = table[effect_axis].min(), table[effect_axis].max()
    rows = []
    for value, group in table.groupby(axis, sort=True):
        lo = _combine(group[group[effect_axis] == lo_v])
        hi = _combine(group[group[effect_axis] == hi_v])
        rows.append({"value": value, "mean": hi[0] - lo[0], "se": math.hypot(hi[1], lo[1]),
                     "df": _welch_df((hi[1], hi[2]), (lo[1], lo[2]))})
    return pd.DataFrame(rows, columns=["value", "mean", "se", "df"])


def _welch_df(*terms: tuple[float, float]) -> float:
    """Welch-Satterthwaite df of a sum of independent estimates given as (se, df)."""
    total = sum(se**2 for se, _ in terms)
    den = sum(se**4 / df for se, df in terms if se > 0)
    return total**2 / den if den > 0 else math.inf


def counts(diff: float, se: float, df: float) -> bool:
    """Whether a difference exceeds its two-sided (1 - ALPHA) t threshold."""
    if not (math.isfinite(diff) and math.isfinite(se)):
        return False
    quantile = stats.t.ppf(1 - ALPHA / 2, df) if math.isfinite(df) else stats.norm.ppf(
        1 - ALPHA / 2)
    return abs(diff) > quantile * se + 1e-12 * (1.0 + abs(diff))


def _fmt(s: pd.DataFrame) -> str:
    return ", ".join(f"{v}: {m:.4g}±{se:.2g}" for v, m, se in
                     zip(s["value"], s["mean"], s["se"], strict=True))


def _trend(s: pd.DataFrame, direction: str) -> tuple[str, str]:
    ys = s["mean"].to_numpy()
    change = ys[-1] - ys[0]
    se = math.hypot(s["se"].iloc[0], s["se"].iloc[-1])
    df = _welch_df((s["se"].iloc[0], s["df"].iloc[0]), (s["se"].iloc[-1], s["df"].iloc[-1]))
    if len(s) > 2:
        rho = pd.Series(s["value"].astype(float).rank()).corr(pd.Series(ys).rank())
        rho = 0.0 if not math.isfinite(rho) else float(rho)
    else:
        rho = math.copysign(1.0, change) if change else 0.0
    sign = 1 if direction == "increasing" else -1
    evidence = (f"badness per value ({_fmt(s)}); Spearman rho {rho:+.2f}; end-to-end change "
                f"{change:+.4g} ± {se:.2g} (Welch df {df:.3g})")
    if not counts(change, se, df):
        return "inconclusive", evidence + ": the change does not exceed its 95% threshold"
    if sign * change > 0 and sign * rho >= MIN_RHO:
        return "supported", evidence
    if sign * change < 0 and sign * rho <= -MIN_RHO:
        return "contradicted", evidence
    return "not supported", evidence + ": not monotone in the claimed direction"


def _compare(s: pd.DataFrame, better: Any) -> tuple[str, str]:
    if better not in set(s["value"]):
        return "inconclusive", f"{better} has no usable cells"
    b = s[s["value"] == better].iloc[0]
    gaps = [(o["value"], o["mean"] - b["mean"], math.hypot(o["se"], b["se"]),
             _welch_df((o["se"], o["df"]), (b["se"], b["df"])))
            for _, o in s[s["value"] != better].iterrows()]
    evidence = f"badness {better}: {b['mean']:.4g}±{b['se']:.2g} vs " + ", ".join(
        f"{v}: gap {g:+.3g}±{se:.2g}" for v, g, se, _ in gaps)
    if gaps and all(g > 0 and counts(g, se, df) for _, g, se, df in gaps):
        return "supported", evidence
    if gaps and all(g < 0 and counts(g, se, df) for _, g, se, df in gaps):
        return "contradicted", evidence
    return "inconclusive", evidence + ": not every gap exceeds its 95% threshold the same way"


def _cells_read(claim, table: pd.DataFrame) -> pd.DataFrame:
    """The cells a claim's statistic uses (an effect reads only the effect axis' two ends)."""
    if claim.kind.startswith("effect"):
        ends = (table[claim.effect_axis].min(), table[claim.effect_axis].max())
        return table[table[claim.effect_axis].isin(ends)]
    return table


def judge(claim, tables: dict[str, pd.DataFrame], modes: dict[str, str],
          unusable: dict[str, str]) -> ClaimVerdict:
    """The verdict on ``claim`` from per-metric :func:`cell_table` s (``modes``: min | max).

    ``unusable``: cell -> reason (:func:`usability`); the claim's axis values that hold such a
    cell among those it reads are left out.
    """
    first = next(iter(tables.values()))
    read = _cells_read(claim, first)
    dropped: dict[Any, str] = {}
    for value, group in read.groupby(claim.axis, sort=True):
        bad = [f"{c}: {unusable[c]}" for c in group["cell"] if c in unusable]
        if bad:
            dropped[value] = "; ".join(bad)
    keep = ~first[claim.axis].isin(list(dropped))
    remaining = first.loc[keep, claim.axis].nunique()
    per_metric = []
    for metric, table in tables.items():
        objective = Objective(metric, modes[metric])  # badness = -score: larger is worse
        t = table[keep.to_numpy()].assign(
            mean=lambda d, o=objective: -o.score(d["mean"]))
        if remaining < 2:
            verdict, evidence = "inconclusive", f"fewer than 2 values of {claim.axis} usable"
        else:
            s = (effect_series(t, claim.effect_axis, claim.axis)
                 if claim.kind.startswith("effect") else series(t, claim.axis))
            verdict, evidence = (_trend(s, claim.direction) if claim.kind.endswith("trend")
                                 else _compare(s, claim.better))
        per_metric.append(MetricVerdict(metric, modes[metric], verdict, evidence))
    found = {m.verdict for m in per_metric}
    verdict = found.pop() if len(found) == 1 else "inconclusive"  # disagreeing metrics
    return ClaimVerdict(verdict, tuple(per_metric), dropped)
