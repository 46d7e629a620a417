"""Tune's trial folders as the viewer shows them, one member at a time (a searched rate, or a
final seed; ``tuner.service.members`` splits a population's or a finals trial's results):
the learning curves and the timeline of when each member trained.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tuner.service.members import member_rows, member_state, members_of
from tuner.service.objective import is_finite
from tuner.view.folders import Folder, read_json, read_json_lines, trial_folders
from tuner.view.search import search_trials, trial_kind

_CURVE_EXTRA = ("train_loss", "grad_norm", "lr_now")  # non-eval keys worth a curve
TIMELINE_COLUMNS = ["round", "cell", "lr", "trial", "member", "start", "end", "state"]


def _trials(folder: Folder, rounds: tuple[str, ...]) -> list[tuple[str, dict, list[dict]]]:
    """(round, config, results) of every trial of ``rounds`` that has reported."""
    out = []
    for rnd, trial in trial_folders(folder, rounds):
        params = folder.cache.get(trial / "params.json", read_json)
        results = folder.cache.get(trial / "result.json", read_json_lines) or []
        if params and results:
            out.append((rnd, params, results))
    return out


def timeline(folder: Folder) -> pd.DataFrame:
    """One row per member of every Tune trial (search rounds and finals): its ``start`` (its
    trial's) and ``end`` (its own last report) in seconds since the experiment's first trial
    started, from Tune's ``result.json`` (``timestamp`` of each report; the first report's
    ``time_this_iter_s`` back to the trial's start), and its ``state``: a search member's
    study state (``KINDS``), a final seed's ``final`` (``diverged`` if it did)."""
    trials = search_trials(folder)
    kind_of = {(t.round, t.cell, t.number): trial_kind(t.state, t.diverged)
               for t in trials.itertuples(index=False)}
    kind_of_tid = {str(t.tune_trial_id): trial_kind(t.state, t.diverged)
                   for t in trials.dropna(subset=["tune_trial_id"]).itertuples(index=False)}
    rows = []
    for rnd, params, results in _trials(folder, (*folder.dirs.search_rounds(), "finals")):
        if "timestamp" not in results[0]:
            continue
        tid = str(results[0].get("trial_id", ""))
        start = results[0]["timestamp"] - float(results[0].get("time_this_iter_s") or 0)
        for m in members_of(params):
            own = member_rows(m, results)
            if not own or own[-1].get("timestamp") is None:
                continue
            if m.stage == "final":
                state = "diverged" if member_state(m, own[-1], None) else "final"
            elif m.prefix:
                state = kind_of.get((rnd, m.cell, m.number), "running")
            else:
                state = kind_of_tid.get(tid, "running")
            rows.append({"round": rnd, "cell": m.cell, "lr": m.lr, "trial": tid,
                         "member": m.label, "start": start, "end": float(own[-1]["timestamp"]),
                         "state": state})
    out = pd.DataFrame(rows, columns=TIMELINE_COLUMNS)
    if len(out):
        t0 = out.start.min()
        out["start"], out["end"] = out.start - t0, out.end - t0
    return out.sort_values(["start", "trial"], kind="stable", ignore_index=True)


def curves(folder: Folder) -> pd.DataFrame:
    """Every evaluation of every member, one row per (member, step).

    Columns: ``stage`` (search | final), ``round``, ``cell``, ``lr``, ``trial`` (a label),
    ``seed`` (finals only), ``state`` (a search member's, from :func:`search_trials`),
    ``step`` and one column per metric.
    """
    states = search_trials(folder).dropna(subset=["tune_trial_id"])
    state_of = {(str(t.tune_trial_id), t.cell, t.number): t.state
                for t in states.itertuples(index=False)}
    number_of = dict(zip(states.tune_trial_id.astype(str), states.number, strict=False))
    frames = []
    for rnd, params, results in _trials(folder, (*folder.dirs.search_rounds(), "finals")):
        tid = str(results[0].get("trial_id", ""))
        for m in members_of(params):
            own = member_rows(m, results)
            if not own:
                continue
            table = pd.DataFrame([_metrics(r) for r in own])
            if m.stage == "final":
                frames.append(table.assign(stage="final", round="finals", cell=m.cell, lr=m.lr,
                                           trial=f"seed {m.seed}", seed=m.seed, state="final"))
                continue
            number = m.number if m.prefix else number_of.get(tid)
            frames.append(table.assign(
                stage="search", round=rnd, cell=m.cell, lr=m.lr,
                trial=f"#{number if number is not None else tid} lr={m.lr:.3g}",
                seed=math.nan, state=state_of.get((tid, m.cell, number), "RUNNING")))
    if not frames:
        return pd.DataFrame(columns=["stage", "round", "cell", "lr", "trial", "seed", "state",
                                     "step"])
    return pd.concat(frames, ignore_index=True)


def curve_metrics(folder: Folder, table: pd.DataFrame) -> list[str]:
    """The metrics of ``table`` that have a curve over steps (the searched one first); the
    once-only values after training (rollout scores) are left to :func:`rollouts`."""
    prefixes = [] if folder.curve is None else [folder.curve["prefix"], folder.curve["se_prefix"]]
    names = [c for c in table.columns if (c.startswith("eval/") or c in _CURVE_EXTRA)
             and not any(c.startswith(p) for p in prefixes) and table[c].notna().any()]
    return sorted(names, key=lambda c: (c != folder.exp.asha.metric, not c.startswith("eval/"), c))


def log_scale_fits(values: pd.Series) -> bool:
    """A log axis where a metric is positive and spans a decade or more (losses, nmse)."""
    v = pd.to_numeric(values, errors="coerce")
    v = v[v.map(is_finite)]
    return bool(len(v)) and bool((v > 0).all()) and v.max() / v.min() >= 10


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items()
            if (k == "step" or k.startswith("eval/") or k in _CURVE_EXTRA)
            and isinstance(v, int | float) and not isinstance(v, bool)}
