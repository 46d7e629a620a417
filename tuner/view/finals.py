"""The finals as the viewer shows them: one row per final seed (``finals.json`` once written,
until then each finals trial's latest report) and the task's curve after training per seed.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tuner.service.objective import is_finite
from tuner.service.report.verdicts import finished
from tuner.service.trial_spec import TrialSpec, overrides, part
from tuner.view.folders import Folder, read_json, read_json_lines, trial_folders


def finals_trials(folder: Folder) -> list[tuple[TrialSpec, dict[str, Any], list[dict]]]:
    """Each finals trial that has reported: its spec, its config, its results."""
    out = []
    for _, trial in trial_folders(folder, ("finals",)):
        params = folder.cache.get(trial / "params.json", read_json) or {}
        results = folder.cache.get(trial / "result.json", read_json_lines) or []
        if "final" in params and results:
            out.append((TrialSpec.of(params), params, results))
    return out


def finals(folder: Folder) -> pd.DataFrame:
    """One row per final seed: ``finals.json`` once written, until then each finals trial's
    latest report (its seed's metrics so far; ``step`` says how far it got)."""
    saved = folder.cache.get(folder.dirs.finals, read_json)
    if saved is not None:
        return pd.DataFrame(saved)
    rows = []
    for spec, params, results in finals_trials(folder):
        for i, m in enumerate(spec.members):  # one cell's seeds, or a shared program's
            own = part(results[-1], spec.prefix(i))
            rows.append({"cell": m.cell, "seed": m.seed, "lr": m.lr,
                         **overrides(params, m.cell),
                         "step": own.get("step", results[-1]["step"]),
                         **{k: v for k, v in own.items()
                            if k.startswith("eval/") or k in ("train_loss", "diverged")}})
    return pd.DataFrame(rows)


def rollouts(folder: Folder, cell: str) -> pd.DataFrame:
    """The task's curve after training for one cell (LDS: score per rollout horizon), one row
    per (seed, x) with ``value`` and its Monte-Carlo ``se``; empty before the finals end."""
    curve, fin = folder.curve, finals(folder)
    if curve is None or not len(fin):
        return pd.DataFrame(columns=["seed", "x", "value", "se"])
    ok = finished(fin)
    ok = ok[ok.cell == cell]
    rows = []
    for col in (c for c in ok.columns if c.startswith(curve["prefix"])):
        x = int(col[len(curve["prefix"]):])
        se_col = curve["se_prefix"] + col[len(curve["prefix"]):]
        for _, r in ok.iterrows():
            if is_finite(r[col]):
                rows.append({"seed": int(r["seed"]), "x": x, "value": float(r[col]),
                             "se": float(r[se_col]) if se_col in r else math.nan})
    return pd.DataFrame(rows, columns=["seed", "x", "value", "se"]).sort_values(["seed", "x"])
