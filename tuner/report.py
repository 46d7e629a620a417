"""The experiment report: all trials as CSV/Parquet, a markdown summary and PNG plots that answer
the hypothesis, ending in a plain verdict per claim with its evidence.

Written only once every run of the experiment has finished (the SPEC's protocol). Claims are
judged on per-cell means over the final seeds; a difference counts only when it exceeds twice its
standard error (seed spread propagated through the averages), otherwise the verdict is
"inconclusive".
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from data.registry import TASKS  # noqa: E402
from tuner.search_space import Claim, Experiment  # noqa: E402

SCORE_PREFIX = "eval/score_t+"


def _cell_table(exp: Experiment, finals: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per cell: grid values, mean, std and count of ``metric`` over the finished seeds."""
    ok = finals[~finals.get("diverged", False).fillna(False).astype(bool)]
    grouped = ok.groupby("cell")[metric]
    table = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1).fillna(0.0),
                          "n": grouped.count()})
    grid = pd.DataFrame.from_dict(exp.cells(), orient="index")  # keeps each axis' own type
    return grid.join(table, how="inner").reset_index(names="cell")


def _agg(table: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Average cell means over every other axis, per value of ``axis``; standard error of it."""
    rows = []
    for value, group in table.groupby(axis, sort=True):
        se = math.sqrt(((group["std"] ** 2) / group["n"].clip(lower=1)).sum()) / len(group)
        rows.append({"value": value, "mean": group["mean"].mean(), "se": se})
    return pd.DataFrame(rows)


def _effect(table: pd.DataFrame, effect_axis: str, axis: str) -> pd.DataFrame:
    """Per value of ``axis``: metric at the largest ``effect_axis`` minus at its smallest."""
    lo_v, hi_v = table[effect_axis].min(), table[effect_axis].max()
    rows = []
    for value, group in table.groupby(axis, sort=True):
        lo = _agg(group[group[effect_axis] == lo_v], axis).iloc[0]
        hi = _agg(group[group[effect_axis] == hi_v], axis).iloc[0]
        rows.append({"value": value, "mean": hi["mean"] - lo["mean"],
                     "se": math.hypot(hi["se"], lo["se"])})
    return pd.DataFrame(rows)


def _missing(series: pd.DataFrame, what: str) -> tuple[str, str] | None:
    """Inconclusive when some value has no finite mean (e.g. a milestone no seed reached)."""
    gaps = [str(v) for v, m in zip(series["value"], series["mean"], strict=True)
            if not math.isfinite(m)]
    if not gaps:
        return None
    return "inconclusive", (f"{what}: no finite value at {', '.join(gaps)} (every seed there "
                            "diverged or never reached the metric)")


def _trend_verdict(series: pd.DataFrame, direction: str, what: str) -> tuple[str, str]:
    if missing := _missing(series, what):
        return missing
    xs, ys, se = series["value"].astype(float), series["mean"], series["se"]
    rho = pd.Series(xs).rank().corr(pd.Series(ys).rank()) if len(series) > 2 else math.copysign(
        1.0, ys.iloc[-1] - ys.iloc[0])
    change = ys.iloc[-1] - ys.iloc[0]
    change_se = math.hypot(se.iloc[0], se.iloc[-1])
    sign = 1 if direction == "increasing" else -1
    points = ", ".join(f"{v:g}: {m:.4g}±{s:.2g}" for v, m, s in zip(xs, ys, se, strict=True))
    evidence = (f"{what} per value ({points}); Spearman rho = {rho:+.2f}; end-to-end change "
                f"{change:+.4g} (standard error {change_se:.2g})")
    if abs(change) <= 2 * change_se:
        return "inconclusive", evidence + ": the change is within twice its standard error"
    if sign * rho >= 0.7 and sign * change > 0:
        return "supported", evidence
    if sign * rho <= -0.7 and sign * change < 0:
        return "contradicted", evidence
    return "not supported", evidence + ": not monotone in the expected direction"


def _compare_verdict(series: pd.DataFrame, better: Any, what: str) -> tuple[str, str]:
    if missing := _missing(series, what):
        return missing
    best_row = series[series["value"] == better].iloc[0]
    others = series[series["value"] != better]
    gaps = [(o["value"], o["mean"] - best_row["mean"], math.hypot(o["se"], best_row["se"]))
            for _, o in others.iterrows()]
    evidence = f"{what}: {better} {best_row['mean']:.4g}±{best_row['se']:.2g} vs " + ", ".join(
        f"{v} {best_row['mean'] + g:.4g} (gap {g:+.3g}±{s:.2g})" for v, g, s in gaps)
    if all(g > 2 * s for _, g, s in gaps):
        return "supported", evidence
    if all(g < -2 * s for _, g, s in gaps):
        return "contradicted", evidence
    return "inconclusive", evidence + ": the gap is within twice its standard error"


def judge(claim: Claim, table: pd.DataFrame, metric: str) -> tuple[str, str]:
    """(verdict, evidence) for one claim from the per-cell table."""
    if claim.kind == "trend":
        return _trend_verdict(_agg(table, claim.axis), claim.direction,
                              f"mean {metric} over the other axes")
    if claim.kind == "compare":
        return _compare_verdict(_agg(table, claim.axis), claim.better, f"mean {metric}")
    effect = _effect(table, claim.effect_axis, claim.axis)
    what = (f"effect of {claim.effect_axis} ({metric} at its largest value minus at its "
            "smallest)")
    if claim.kind == "effect_trend":
        return _trend_verdict(effect, claim.direction, what)
    return _compare_verdict(effect, claim.better, what)


def _plot_claim(claim: Claim, table: pd.DataFrame, metric: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    x_axis = claim.effect_axis if claim.kind.startswith("effect") else claim.axis
    series_axes = [a for a in table.columns if a not in ("cell", "mean", "std", "n", x_axis)]
    groups = table.groupby(series_axes) if series_axes else [((), table)]
    numeric = pd.api.types.is_numeric_dtype(table[x_axis])  # False for optimizer names etc.
    for key, group in groups:
        group = group.sort_values(x_axis)
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{a.split('.')[-1]}={k}" for a, k in zip(series_axes, key,
                                                                     strict=True))
        ax.errorbar(group[x_axis] if numeric else group[x_axis].astype(str),
                    group["mean"], yerr=group["std"], marker="o", capsize=3, label=label or None)
    if numeric and (table[x_axis] > 0).all() and \
            table[x_axis].max() / table[x_axis].min() >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x_axis)
    ax.set_ylabel(f"{metric} (final, mean ± std over seeds)")
    ax.set_title(textwrap.fill(claim.text, 70), fontsize=9)
    if series_axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_rollouts(finals: pd.DataFrame, path: Path) -> list[int]:
    cols = sorted((c for c in finals.columns if c.startswith(SCORE_PREFIX)),
                  key=lambda c: int(c[len(SCORE_PREFIX):]))
    horizons = [int(c[len(SCORE_PREFIX):]) for c in cols]
    if not cols:
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for cell, group in finals.groupby("cell", sort=False):
        ax.plot(horizons, group[cols].mean().to_numpy(), marker=".", label=cell)
    ax.set_xscale("log", base=2)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("horizon h (generated steps after the warmup)")
    ax.set_ylabel("model h-step error / KF h-step error")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return horizons


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write(exp: Experiment, root: Path, best: dict[str, Any], finals_rows: list[dict],
          search_trials: pd.DataFrame) -> Path:
    """Writes ``root/report/`` and returns the path of ``summary.md``."""
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    finals = pd.DataFrame(finals_rows)
    metric = exp.metric
    all_rows = pd.concat([search_trials.assign(stage="search"), finals.assign(stage="final")],
                         ignore_index=True)
    all_rows.to_csv(out / "trials.csv", index=False)
    all_rows.astype({c: str for c in all_rows.columns if all_rows[c].dtype == object}).to_parquet(
        out / "trials.parquet", index=False)

    table = _cell_table(exp, finals, metric)
    lines = [f"# {exp.name}", "", f"**Hypothesis.** {exp.hypothesis}", "",
             f"Experiment file: `{exp.path}`; {len(exp.cells())} cells x "
             f"{exp.trials_per_cell} search trials, finals with seeds {list(exp.seeds)}, "
             f"budget {exp.max_t} steps; metric `{metric}` "
             f"({'lower' if exp.mode == 'min' else 'higher'} is better).",
             "", "## Learning rate per cell (stage 1)", "",
             "| cell | best lr | search value | trials (complete/pruned/diverged/failed) | note |",
             "|---|---|---|---|---|"]
    for cell in exp.cells():
        b = best[cell]
        of_cell = search_trials[search_trials["cell"] == cell]
        st = of_cell["state"].value_counts()
        n_diverged = int(of_cell.get("diverged", pd.Series(dtype=bool)).fillna(False).sum())
        lo, hi = b.get("range", (exp.lr_low, exp.lr_high))
        note = (f"at the {b['at_edge']} edge of [{lo:g}, {hi:g}]: rerun with --widen-edges "
                "or widen search.lr_low/lr_high" if b.get("at_edge") else "")
        if b.get("round", "search") != "search":
            note = f"from {b['round']} [{lo:g}, {hi:g}]; " + note
        lines.append(f"| {cell} | {b['lr']:.3g} | {b['value']:.4g} | {st.get('COMPLETE', 0)}/"
                     f"{st.get('PRUNED', 0) - n_diverged}/{n_diverged}/{st.get('FAIL', 0)} | "
                     f"{note} |")
    score_cols = sorted((c for c in finals.columns if c.startswith(SCORE_PREFIX)),
                        key=lambda c: int(c[len(SCORE_PREFIX):]))
    columns = [f"eval/{m}" for m in TASKS[exp.base.task].REPORTED if f"eval/{m}" in finals]
    lines += ["", "## Finals (stage 2): mean ± std over seeds", "",
              _row(["cell", *(c.removeprefix("eval/") for c in columns),
                    *(c.replace("eval/score_", "") for c in score_cols)]),
              "|---" * (1 + len(columns) + len(score_cols)) + "|"]
    for cell, group in finals.groupby("cell", sort=False):
        def ms(col, group=group):
            vals = group[col].astype(float)
            return f"{vals.mean():.4g} ± {vals.std(ddof=1):.2g}"
        lines.append(_row([cell, *(ms(c) for c in columns),
                           *(f"{group[c].astype(float).mean():.3g}" for c in score_cols)]))
    diverged = finals[finals.get("diverged", False).fillna(False).astype(bool)]
    if len(diverged):
        runs = list(zip(diverged.cell, diverged.seed, strict=True))
        lines += ["", f"Diverged final runs (excluded): {runs}"]
    if score_cols:
        lines += ["", "Rollout scores: model h-step error / KF h-step error after a "
                  f"{exp.base.rollout.warmup}-observation warmup, "
                  f"{exp.base.rollout.n_sequences} sequences; see `rollouts.png`."]
    lines += ["", "## Verdict", ""]
    for i, claim in enumerate(exp.claims):
        claim_metric = claim.metric or metric
        claim_table = table if claim_metric == metric else _cell_table(exp, finals, claim_metric)
        verdict, evidence = judge(claim, claim_table, claim_metric)
        png = f"claim{i + 1}.png"
        _plot_claim(claim, claim_table, claim_metric, out / png)
        lines.append(f"{i + 1}. **{claim.text}: {verdict}.** {evidence}. Plot: `{png}`.")
    if not exp.claims:
        lines.append("The experiment file states no checkable claims.")
    _plot_rollouts(finals, out / "rollouts.png")
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary


def verdict_lines(summary: Path) -> list[str]:
    text = summary.read_text().split("## Verdict", 1)[-1]
    return [line for line in text.splitlines() if line.strip()]

