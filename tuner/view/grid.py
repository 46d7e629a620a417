"""Per-cell tables of the viewer: the grid of one experiment (axis values, best rate, trials
by state, finals' mean) and the comparison of several experiments' finals cell by cell.
"""

from __future__ import annotations

import math

import pandas as pd

from tuner.service.objective import is_finite
from tuner.service.report.verdicts import finished
from tuner.view.finals import finals
from tuner.view.folders import Folder, status
from tuner.view.search import best_lr, search_trials


def cells(folder: Folder) -> pd.DataFrame:
    """The grid: one row per cell with its axis values, best lr, search trials by state and
    its finals' mean of the searched metric."""
    exp = folder.exp
    trials, best = search_trials(folder), best_lr(folder).set_index("cell")
    fin = finals(folder)
    ok = finished(fin) if len(fin) else fin
    live = (status(folder) or {}).get("cells", {})
    rows = []
    for cell, over in exp.cells().items():
        of = trials[trials.cell == cell]
        div = int(of.diverged.fillna(False).astype(bool).sum())
        st = of.state.value_counts()
        b = best.loc[cell] if cell in best.index else None
        row = {"cell": cell, **over,
               "best lr": None if b is None else b["best lr"],
               f"search {exp.asha.metric}": None if b is None else b["value"],
               "chosen": "" if b is None else ("yes" if b["final"] else "so far"),
               "edge": "" if b is None or not b["at_edge"] else b["at_edge"],
               "trials (done/pruned/diverged/failed/running)":
                   f"{st.get('COMPLETE', 0)}/{st.get('PRUNED', 0) - div}/{div}/"
                   f"{st.get('FAIL', 0)}/{live.get(cell, {}).get('running', 0)}"}
        of_final = ok[ok.cell == cell] if len(ok) else ok
        if exp.asha.metric in of_final:
            row[f"finals {exp.asha.metric}"] = _mean_sd(of_final[exp.asha.metric])
        rows.append(row)
    return pd.DataFrame(rows)


def compare(folders: list[Folder], metric: str) -> pd.DataFrame:
    """One row per (experiment, cell): its grid values, best lr and the finals' ``metric``
    (mean, sd, n over finished seeds); a row per cell also while its finals are pending."""
    rows = []
    for folder in folders:
        best = best_lr(folder).set_index("cell")
        fin = finals(folder)
        ok = finished(fin) if len(fin) else fin
        for cell, over in folder.exp.cells().items():
            vals = (ok.loc[ok.cell == cell, metric].astype(float)
                    if metric in ok else pd.Series(dtype=float))
            vals = vals[vals.map(is_finite)]
            rows.append({"experiment": folder.label, "cell": cell, **over,
                         "best lr": best["best lr"].get(cell) if len(best) else None,
                         "mean": vals.mean() if len(vals) else math.nan,
                         "sd": vals.std(ddof=1) if len(vals) > 1 else math.nan,
                         "n": len(vals)})
    return pd.DataFrame(rows)



def _mean_sd(vals: pd.Series) -> str:
    vals = vals.astype(float)
    vals = vals[vals.map(is_finite)]
    if not len(vals):
        return "n/a"
    return f"{vals.mean():.4g} ± " + (f"{vals.std(ddof=1):.2g}" if len(vals) > 1 else "n/a")
