"""The search as the viewer shows it: its trials (``search_trials.csv`` once the search has
ended, until then the studies' journals), each cell's best rate so far, the landscape of values
against rates (a running member's latest value from its Tune trial folder) and the rate map.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tuner.service.members import member_rows, members_of
from tuner.service.objective import is_finite
from tuner.service.report.verdicts import finished
from tuner.service.search.study import DIVERGED_ATTR, TUNE_ID_ATTR
from tuner.view.finals import finals
from tuner.view.folders import Folder, journal_trials, read_json, read_json_lines, trial_folders

TRIAL_COLUMNS = ["cell", "round", "number", "lr", "state", "value", "last_step", "diverged",
                 "tune_trial_id"]


def search_trials(folder: Folder) -> pd.DataFrame:
    """One row per search trial (``TRIAL_COLUMNS``): ``search_trials.csv`` once the search has
    finished, until then the journals of every round (``ExperimentDirs.round_studies``)."""
    csv = folder.cache.get(folder.dirs.search_trials, pd.read_csv)
    if csv is not None:
        return csv.reindex(columns=TRIAL_COLUMNS)
    rows = []
    for rnd in folder.dirs.search_rounds():
        for path in sorted(folder.dirs.round_studies(rnd).glob("*.journal")):
            for t in folder.cache.get(path, journal_trials) or []:
                rows.append({"cell": path.stem, "round": rnd, "number": t.number,
                             "lr": t.params.get("lr"), "state": t.state.name, "value": t.value,
                             "last_step": max(t.intermediate_values, default=None),
                             "diverged": bool(t.user_attrs.get(DIVERGED_ATTR, False)),
                             "tune_trial_id": t.user_attrs.get(TUNE_ID_ATTR)})
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def best_lr(folder: Folder) -> pd.DataFrame:
    """Per cell: best lr and its search value, ``final`` True when ``search_best.json`` says so
    (the service's choice), False for the best full-budget trial so far of a running search."""
    saved = folder.cache.get(folder.dirs.best, read_json)
    rows = []
    if saved is not None:
        for cell, b in saved.items():
            rows.append({"cell": cell, "best lr": b and b["lr"], "value": b and b["value"],
                         "at_edge": b and b.get("at_edge"), "final": True})
        return pd.DataFrame(rows)
    trials = search_trials(folder)
    done = trials[(trials.state == "COMPLETE") & trials.value.map(is_finite)]
    sign = 1 if folder.exp.asha.mode == "min" else -1
    for cell, group in done.groupby("cell", sort=False):
        b = group.loc[(sign * group.value.astype(float)).idxmin()]
        rows.append({"cell": cell, "best lr": b.lr, "value": b.value, "at_edge": None,
                     "final": False})
    return pd.DataFrame(rows, columns=["cell", "best lr", "value", "at_edge", "final"])



LANDSCAPE_COLUMNS = ["cell", "round", "number", "lr", "kind", "value", "step", "tune_trial_id"]
KINDS = ("complete", "pruned", "diverged", "failed", "running")  # how a search trial ended


def trial_kind(state: Any, diverged: Any) -> str:
    if str(diverged).strip().lower() in ("true", "1", "1.0"):  # bool, numpy bool or CSV text
        return "diverged"
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(str(state),
                                                                            "running")


def _last_reports(folder: Folder) -> dict[tuple, dict[str, Any]]:
    """(Tune trial id,) or, for a population's member, (id, cell, Optuna trial number) -> its
    latest evaluation (``step`` and the metrics), from the trial folders: the value a running
    trial has reached, which no journal holds yet."""
    out = {}
    for _, trial in trial_folders(folder, tuple(folder.dirs.search_rounds())):
        params = folder.cache.get(trial / "params.json", read_json)
        results = folder.cache.get(trial / "result.json", read_json_lines) or []
        if not params or not results:
            continue
        tid = str(results[-1].get("trial_id", ""))
        for m in members_of(params):
            own = member_rows(m, results)
            out[(tid, m.cell, m.number) if m.prefix else (tid,)] = own[-1] if own else {}
    return out


def landscape(folder: Folder) -> pd.DataFrame:
    """The searched metric against the rate: one row per search trial at the last rung it
    reached (``LANDSCAPE_COLUMNS``; ``kind`` one of ``KINDS``).

    ``value`` is the trial's value in the study (a complete trial's full-budget value, a pruned
    one's at the rung where it stopped); a running trial, or one whose study value is missing,
    takes its latest report from its Tune folder. A diverged or failed trial has none (NaN).
    """
    trials = search_trials(folder)
    reports = _last_reports(folder)
    metric = folder.exp.asha.metric
    rows = []
    for t in trials.itertuples(index=False):
        kind = trial_kind(t.state, t.diverged)
        latest = reports.get((str(t.tune_trial_id), t.cell, t.number),
                             reports.get((str(t.tune_trial_id),), {}))
        value, step = t.value, t.last_step
        if kind in ("diverged", "failed"):
            value = math.nan
        elif not is_finite(value):
            value, step = latest.get(metric, math.nan), latest.get("step", step)
        rows.append({"cell": t.cell, "round": t.round, "number": t.number, "lr": t.lr,
                     "kind": kind, "value": float(value) if is_finite(value) else math.nan,
                     "step": step, "tune_trial_id": t.tune_trial_id})
    return pd.DataFrame(rows, columns=LANDSCAPE_COLUMNS)


def chosen(folder: Folder) -> pd.DataFrame:
    """Per cell: the chosen (or best so far) ``lr`` and its search ``value``, the ranges its
    rounds searched (``ranges``: list of (low, high)), its edge, and the finals' searched metric
    at that rate over finished seeds (``finals_mean``, ``finals_sd``, ``finals_n``)."""
    best = best_lr(folder).set_index("cell")
    saved = folder.cache.get(folder.dirs.best, read_json) or {}
    fin = finals(folder)
    ok = finished(fin) if len(fin) else fin
    metric, exp = folder.exp.asha.metric, folder.exp
    rows = []
    for cell in exp.cells():
        b = best.loc[cell] if cell in best.index else None
        ranges = [(exp.search.lr_low, exp.search.lr_high)]
        extra = (saved.get(cell) or {}).get("range")
        if extra and tuple(extra) not in ranges:
            ranges.append(tuple(extra))
        vals = (ok.loc[ok.cell == cell, metric].astype(float)
                if len(ok) and metric in ok else pd.Series(dtype=float))
        vals = vals[vals.map(is_finite)]
        rows.append({"cell": cell, "lr": None if b is None else b["best lr"],
                     "value": None if b is None else b["value"],
                     "final": False if b is None else bool(b["final"]),
                     "edge": None if b is None else b["at_edge"], "ranges": ranges,
                     "finals_mean": vals.mean() if len(vals) else math.nan,
                     "finals_sd": vals.std(ddof=1) if len(vals) > 1 else math.nan,
                     "finals_n": len(vals)})
    return pd.DataFrame(rows)


def rate_map(folder: Folder) -> pd.DataFrame:
    """The rate map's table (:func:`tuner.service.report.lr_map.table`): the service's choice
    once ``search_best.json`` exists, the best complete trial so far until then."""
    from tuner.service.report import lr_map

    saved = folder.cache.get(folder.dirs.best, read_json)
    if saved is None:
        saved = {r.cell: {"lr": r.lr, "at_edge": None} for r in chosen(folder).itertuples()
                 if r.lr is not None and is_finite(r.lr)}
    return lr_map.table(folder.exp.grid, folder.exp.cells(), saved)
