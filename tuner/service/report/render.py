"""The experiment report: all trials as CSV/Parquet, a markdown summary and PNG plots that answer
the hypothesis, ending in a verdict per claim that names the metrics it rests on.

Written only once every run of the experiment has finished (the SPEC's protocol). The statistics
of the verdicts (replicates, series, the learning check) are in :mod:`.verdicts`; this module
only lays them out: the finals per cell (mean ± sd over seeds, each seed its own system), the
task's system properties apart (e.g. the LDS's information cost of patching), the rollout scores
with their standard errors, and per claim its verdict, evidence and plot.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from data.registry import TASKS, metric_mode  # noqa: E402
from tuner.service.dirs import ExperimentDirs  # noqa: E402
from tuner.service.experiment import Claim, Experiment  # noqa: E402
from tuner.service.report import lr_map, seeds_needed, verdicts  # noqa: E402
from tuner.service.trial_spec import TrialSpec, part  # noqa: E402


def claim_metrics(claim: Claim, exp: Experiment) -> tuple[str, ...]:
    """The metrics a claim is judged on: its own, else the experiment's search metric."""
    return tuple(claim.metrics) or (exp.asha.metric,)


def judge_all(exp: Experiment, finals: pd.DataFrame, learning_check: bool = True
              ) -> tuple[list[verdicts.ClaimVerdict], dict[str, pd.DataFrame], dict[str, str]]:
    """Every claim's verdict, the per-metric cell tables they used, and the unusable cells
    (``learning_check`` False: as if the task had none, what a plan for more seeds needs)."""
    task = TASKS[exp.base.task]
    cells = exp.cells()
    needed = {m for c in exp.claims for m in claim_metrics(c, exp)}
    tables = {m: verdicts.cell_table(cells, finals, m) for m in sorted(needed)}
    check = getattr(task, "LEARNING_CHECK", None) if learning_check else None
    check_table = (verdicts.cell_table(cells, finals, f"eval/{check[0]}") if check else None)
    any_table = verdicts.cell_table(cells, finals, "step")
    read = dict(tables) | ({f"eval/{check[0]}": check_table} if check else {})
    unusable = verdicts.usability(any_table, check_table, check[1] if check else None, read)
    out = [verdicts.judge(c, {m: tables[m] for m in claim_metrics(c, exp)},
                          {m: metric_mode(exp.base.task, m) for m in claim_metrics(c, exp)},
                          unusable) for c in exp.claims]
    return out, tables, unusable


def _learning_gaps(exp: Experiment, finals: pd.DataFrame, cells: set[str]
                   ) -> dict[str, tuple[verdicts.Contrast, float]]:
    """Per cell that failed only the learning check: its mean on the check metric as a
    contrast, and how far that mean lies above the floor (what more seeds must resolve)."""
    check = getattr(TASKS[exp.base.task], "LEARNING_CHECK", None)
    if not cells or not check:
        return {}
    table = verdicts.cell_table(exp.cells(), finals, f"eval/{check[0]}")
    rows = table.set_index("cell")
    return {c: (verdicts.contrast(table, {c: 1.0}, f"`eval/{check[0]}` of {c} above {check[1]:g}"),
                float(rows.loc[c, "mean"]) - check[1]) for c in sorted(cells)}


def _plot_claim(claim: Claim, tables: dict[str, pd.DataFrame], path: Path) -> None:
    """One panel per metric of the claim: cell means ± sd over seeds along the x axis."""
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4), squeeze=False)
    x_axis = claim.effect_axis if claim.kind.startswith("effect") else claim.axis
    for ax, (metric, table) in zip(axes[0], tables.items(), strict=True):
        _plot_cells(ax, table, x_axis, f"{metric} (final, mean ± sd over seeds)")
    fig.suptitle(textwrap.fill(claim.text, 90), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_cells(ax, table: pd.DataFrame, x_axis: str, ylabel: str) -> None:
    series_axes = [a for a in table.columns
                   if a not in ("cell", "mean", "sd", "n", "se", "df", "n_runs", x_axis)]
    groups = table.groupby(series_axes) if series_axes else [((), table)]
    numeric = pd.api.types.is_numeric_dtype(table[x_axis])  # False for optimizer names etc.
    for key, group in groups:
        group = group.sort_values(x_axis)
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{a.split('.')[-1]}={k}" for a, k in zip(series_axes, key,
                                                                     strict=True))
        ax.errorbar(group[x_axis] if numeric else group[x_axis].astype(str),
                    group["mean"], yerr=group["sd"], marker="o", capsize=3, label=label or None)
    if numeric and (table[x_axis] > 0).all() and \
            table[x_axis].max() / table[x_axis].min() >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x_axis)
    ax.set_ylabel(ylabel)
    if series_axes:
        ax.legend(fontsize=7)


def _plot_curves(finals: pd.DataFrame, curve: dict[str, Any], path: Path) -> list[int]:
    """One small panel per cell: the task's curve (e.g. rollout score per horizon), mean with
    its standard error over seeds."""
    prefix = curve["prefix"]
    cols = _curve_columns(finals, prefix)
    horizons = [int(c[len(prefix):]) for c in cols]
    if not cols:
        return []
    groups = list(verdicts.finished(finals).groupby("cell", sort=False))
    ncol = min(4, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False,
                             sharex=True)
    for ax, (cell, group) in zip(axes.flat, groups, strict=False):
        vals = group[cols].astype(float)
        se = vals.std(ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else None
        ax.errorbar(horizons, vals.mean().to_numpy(), yerr=None if se is None else se.to_numpy(),
                    marker=".", capsize=2)
        ax.set_xscale("log", base=2)
        if curve.get("reference") is not None:
            ax.axhline(curve["reference"], color="k", lw=0.8, ls="--")
        ax.set_title(cell, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.supxlabel(curve["x"], fontsize=8)
    fig.supylabel(curve["y"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return horizons


def _curve_columns(finals: pd.DataFrame, prefix: str) -> list[str]:
    return sorted((c for c in finals.columns if c.startswith(prefix)),
                  key=lambda c: int(c[len(prefix):]))


def proposals(of_cell: pd.DataFrame, best: dict) -> str:
    """Where a population search's rates came from (strata, a neighbour's best, TPE) and
    which one the best was; empty for the one-trial-per-rate search."""
    if "source" not in of_cell or of_cell["source"].isna().all():
        return ""
    counts = of_cell["source"].value_counts()
    # trial numbers restart in every search round (a study per round): the best's own round
    same_round = (of_cell["round"] == best.get("round", "search")) if "round" in of_cell \
        else True
    won = of_cell.loc[same_round & (of_cell["number"] == best.get("trial_number")), "source"]
    return (f"rates from {', '.join(f'{k} {v}' for k, v in counts.items())}"
            + (f"; best from {won.iloc[0]}" if len(won) else "") + "; ")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _mean_sd(vals: pd.Series, standard_error: bool = False, digits: int = 4) -> str:
    """``mean ± sd`` (or ± its standard error) of the finite values, n/a where undefined."""
    vals = vals.astype(float)
    vals = vals[vals.map(math.isfinite)]
    if not len(vals):
        return "n/a"
    spread = vals.std(ddof=1) / (math.sqrt(len(vals)) if standard_error else 1.0)
    return f"{vals.mean():.{digits}g} ± " + (f"{spread:.2g}" if len(vals) > 1 else "n/a")


def write(exp: Experiment, root: Path, best: dict[str, Any], finals_rows: list[dict],
          search_trials: pd.DataFrame) -> Path:
    """Writes ``root/report/`` and returns the path of ``summary.md``."""
    dirs = ExperimentDirs(root)
    out = dirs.report
    out.mkdir(parents=True, exist_ok=True)
    finals = pd.DataFrame(finals_rows)
    task = TASKS[exp.base.task]
    metric = exp.asha.metric
    all_rows = pd.concat([search_trials.assign(stage="search"), finals.assign(stage="final")],
                         ignore_index=True)
    all_rows.to_csv(dirs.report_trials, index=False)
    all_rows.astype({c: str for c in all_rows.columns if all_rows[c].dtype == object}).to_parquet(
        dirs.report_trials.with_suffix(".parquet"), index=False)

    claim_verdicts, tables, unusable = judge_all(exp, finals)
    lines = [f"# {exp.name}", "", f"**Hypothesis.** {exp.hypothesis}", "",
             f"Experiment file: `{exp.path}`; {len(exp.cells())} cells x "
             f"{exp.search.trials_per_cell} search trials (searched on `{metric}`, "
             f"{'lower' if exp.asha.mode == 'min' else 'higher'} is better), finals with seeds "
             f"{list(exp.finals.seeds)}, budget {exp.max_t} steps.",
             "", "## Learning rate per cell (stage 1)", "",
             "| cell | best lr | search value | trials (complete/pruned/diverged/failed) | note |",
             "|---|---|---|---|---|"]
    for cell in exp.cells():
        b = best[cell]
        of_cell = search_trials[search_trials["cell"] == cell]
        st = of_cell["state"].value_counts()
        n_diverged = int(of_cell.get("diverged", pd.Series(dtype=bool)).fillna(False).sum())
        lo, hi = b.get("range", (exp.search.lr_low, exp.search.lr_high))
        note = (f"at the {b['at_edge']} edge of [{lo:g}, {hi:g}]: rerun with --widen-edges "
                "or widen search.lr_low/lr_high" if b.get("at_edge") else "")
        if b.get("round", "search") != "search":
            note = f"from {b['round']} [{lo:g}, {hi:g}]; " + note
        note = proposals(of_cell, b) + note
        lines.append(f"| {cell} | {b['lr']:.3g} | {b['value']:.4g} | {st.get('COMPLETE', 0)}/"
                     f"{st.get('PRUNED', 0) - n_diverged}/{n_diverged}/{st.get('FAIL', 0)} | "
                     f"{note} |")
    lines += ["", "Rate map, the chosen lr over the grid's axes (marked where it is at an edge "
              "of its range): `" + lr_map.write(exp.grid, exp.cells(), best, dirs.lr_map,
                                                f"{exp.name}: chosen learning rate per cell"
                                                ).name + "`."]
    system_cols = [f"eval/{m}" for m in getattr(task, "SYSTEM_METRICS", ()) if f"eval/{m}"
                   in finals]
    columns = [f"eval/{m}" for m in task.REPORTED if f"eval/{m}" in finals]
    systems = (f"; seed s trains on its own system ({task.SYSTEM_SEED} = file's + 1 + s), so the "
               "spread covers the system draw" if task.SYSTEM_SEED else "")
    lines += ["", "## Finals (stage 2): mean ± sd over seeds", "",
              f"Each final seed is its own run (init, data{', system' if systems else ''}){systems}"
              "; scored on held-out data that did not choose the learning rate. `flag`: why a "
              "cell carries no verdict (see Verdict).", "",
              _row(["cell", "seeds ok/run", *(c.removeprefix("eval/") for c in columns),
                    "flag"]),
              "|---" * (3 + len(columns)) + "|"]
    ok = verdicts.finished(finals)
    for cell in exp.cells():
        group = ok[ok["cell"] == cell]
        n_runs = int((finals["cell"] == cell).sum()) if len(finals) else 0
        lines.append(_row([cell, f"{len(group)}/{n_runs}",
                           *(_mean_sd(group[c]) if c in group else "n/a" for c in columns),
                           unusable.get(cell, "")]))
    diverged = finals[finals.get("diverged", pd.Series(False, index=finals.index))
                      .astype("boolean").fillna(False).astype(bool)]
    if len(diverged):
        runs = list(zip(diverged.cell, diverged.seed, strict=True))
        lines += ["", f"Diverged final runs (excluded): {runs}"]
    if system_cols:
        lines += ["", "## Properties of the systems (not of the model)", "",
                  "The same for every predictor of a cell: what the task instance itself "
                  f"imposes ({getattr(task, 'SYSTEM_TEXT', '')}), over the seeds' systems. "
                  "Plot: `system.png`.", "",
                  _row(["cell", *(c.removeprefix("eval/") for c in system_cols)]),
                  "|---" * (1 + len(system_cols)) + "|"]
        for cell in exp.cells():
            group = ok[ok["cell"] == cell]
            lines.append(_row([cell, *(_mean_sd(group[c]) for c in system_cols)]))
        _plot_system(exp, finals, system_cols, out / "system.png")
    curve = getattr(task, "CURVE", None)
    score_cols = _curve_columns(finals, curve["prefix"]) if curve else []
    if score_cols:
        png = f"{curve['title'].lower()}.png"
        lines += ["", f"## {curve['title']}: mean ± standard error over seeds", "",
                  f"{curve['about']}. The Monte-Carlo standard error of one seed's value is in "
                  f"`mc se`, as a fraction of the value at the largest {curve['x'].split()[0]}; "
                  f"see `{png}`.", "",
                  _row(["cell", *(c.removeprefix(curve["prefix"]) for c in score_cols),
                        "mc se"]),
                  "|---" * (2 + len(score_cols)) + "|"]
        last = score_cols[-1]
        last_se = last.replace(curve["prefix"], curve["se_prefix"])
        for cell in exp.cells():
            group = ok[ok["cell"] == cell]
            rel = (group[last_se] / group[last]).mean() if last_se in group else math.nan
            scores = [_mean_sd(group[c], standard_error=True, digits=3) for c in score_cols]
            lines.append(_row([cell, *scores, f"{rel:.1%}" if math.isfinite(rel) else "n/a"]))
    lines += ["", "## Verdict", "",
              "Each claim names the metrics that answer it. The first one decides: the claim is "
              "supported (contradicted) when that metric shows it by a difference beyond its 95% "
              "t threshold over the seeds, and no other metric contradicts it by a difference "
              "beyond the same threshold the other way (then it is inconclusive) "
              "(tuner/service/report/verdicts.py); an effect claim reads every value of "
              "its effect axis. Cells that are not clearly better than the trivial predictor, "
              "lack replicates or lack finite values of a claim's metric are left out of every "
              "claim.", ""]
    for i, (claim, v) in enumerate(zip(exp.claims, claim_verdicts, strict=True)):
        png = dirs.claim_plot(i + 1)
        _plot_claim(claim, {m: tables[m] for m in claim_metrics(claim, exp)}, png)
        names = ", ".join(f"`{m}`" for m in claim_metrics(claim, exp))
        lines.append(f"{i + 1}. **{claim.text}: {v.verdict}** (on {names}). {v.evidence()}. "
                     f"Plot: `{png.name}`.")
    if not exp.claims:
        lines.append("The experiment file states no checkable claims.")
    if any(v.verdict == "inconclusive" for v in claim_verdicts):
        plan_verdicts, _, structural = judge_all(exp, finals, learning_check=False)
        lines += seeds_needed.lines(exp, claim_verdicts, plan_verdicts,
                                    _learning_gaps(exp, finals, set(unusable) - set(structural)),
                                    root)
    if score_cols:
        _plot_curves(finals, curve, out / f"{curve['title'].lower()}.png")
    if _plot_diagnostics(task, finals, _diagnostic_histories(root), out / "diagnostics.png"):
        marks = ", ".join(f"`eval/{m[0]}`" for m in task.MILESTONES)
        lines += ["", "## Diagnostics", "",
                  "The finals' `diag/` metrics (tuner/core/diagnostics.py) against the step, one "
                  "line per cell and seed" + (f"; dashed: that seed's {marks}" if marks else "")
                  + ". Plot: `diagnostics.png`."]
    summary = dirs.summary
    summary.write_text("\n".join(lines) + "\n")
    return summary


def _diagnostic_histories(root: Path) -> dict[tuple[str, int], pd.DataFrame]:
    """(cell, seed) -> that seed's ``diag/`` metrics per step, from the finals trials' Tune
    result files (every evaluation; finals.json keeps only the last), those of seeds added
    later (``finals-seeds-*/``) included."""
    out: dict[tuple[str, int], list[dict]] = {}
    for path in sorted([*root.glob("finals/*/result.json"),
                        *root.glob("finals-seeds-*/*/result.json")]):
        for line in path.read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if "final" not in (r.get("config") or {}):
                continue
            spec = TrialSpec.of(r["config"])
            for i, m in enumerate(spec.members):  # one cell's seeds, or a shared program's
                diag = part(r, spec.prefix(i) + "diag/")
                if diag:
                    out.setdefault((m.cell, int(m.seed)), []).append(
                        {"step": r["step"], **diag})
    return {k: pd.DataFrame(v).drop_duplicates("step", keep="last").sort_values("step")
            for k, v in out.items()}


def _plot_diagnostics(task, finals: pd.DataFrame,
                      histories: dict[tuple[str, int], pd.DataFrame], path: Path) -> bool:
    """One panel per diagnostic (the per-module weight norms share one), a line per cell and
    seed, and a dashed vertical line at each seed's milestone step (the grokking step). False
    (no plot) when the finals logged no diagnostics."""
    if not histories:
        return False
    keys = sorted({k for h in histories.values() for k in h.columns if k != "step"})
    panels = [k for k in keys if not k.startswith("weight_norm/")]
    panels += ["weight_norm/*"] if len(panels) < len(keys) else []
    milestones = [f"eval/{m[0]}" for m in task.MILESTONES if f"eval/{m[0]}" in finals]
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels, strict=False):
        for j, ((cell, seed), h) in enumerate(sorted(histories.items())):
            color = colors[j % len(colors)]
            cols = [k for k in h.columns if k.startswith("weight_norm/")] \
                if panel == "weight_norm/*" else [panel] if panel in h else []
            for col in cols:
                ax.plot(h["step"], h[col], color=color, lw=1,
                        label=f"{cell} s{seed}" if col == cols[0] else None)
            row = finals[(finals["cell"] == cell) & (finals["seed"] == seed)]
            for m in milestones:
                step = float(row[m].iloc[0]) if len(row) else math.nan
                if math.isfinite(step):
                    ax.axvline(step, color=color, ls="--", lw=0.8)
        ax.set_title(panel, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=5)
    fig.supxlabel("step", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_system(exp: Experiment, finals: pd.DataFrame, cols: list[str], path: Path) -> None:
    """The system properties per cell along the experiment's first grid axis."""
    x_axis = next(iter(exp.grid))
    fig, axes = plt.subplots(1, len(cols), figsize=(6 * len(cols), 4), squeeze=False)
    for ax, col in zip(axes[0], cols, strict=True):
        table = verdicts.cell_table(exp.cells(), finals, col)
        _plot_cells(ax, table, x_axis, f"{col} (mean ± sd over systems)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict_lines(summary: Path) -> list[str]:
    """The numbered verdict lines of a written summary (what the CLI prints)."""
    text = summary.read_text().split("## Verdict", 1)[-1].split("\n## ", 1)[0]
    return [line for line in text.splitlines() if line[:1].isdigit()]
