"""What the service wrote about the run as a whole, for the viewer: the pilot's projection
against the stage times (``pilot.json``, ``times.json``), the claims' verdicts and plots and
``report/summary.md``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from tuner.view.folders import Folder, read_json


# ------------------------------------------------------------------------------ cost
def cost(folder: Folder) -> pd.DataFrame:
    """Per stage (search, finals, total): the pilot's projection (``pilot.json``) and the
    last run's wall time (``times.json``, written by the CLI as each stage ends); NaN where
    either is missing (no pilot ran, the stage has not ended)."""
    pilot = folder.cache.get(folder.dirs.pilot, read_json) or {}
    projected = pilot.get("projection", {}).get("current", {})
    actual = folder.cache.get(folder.dirs.times, read_json) or {}
    return pd.DataFrame([{"stage": key[:-2], "projected_s": projected.get(key, math.nan),
                          "actual_s": actual.get(key, math.nan)}
                         for key in ("search_s", "finals_s", "total_s")])



def claims(folder: Folder) -> list[dict[str, Any]]:
    """Per claim of the file: its text, metrics, the verdict line of ``report/summary.md`` and
    the path of its plot (``report/claim<i>.png``); both None until the report is written."""
    summary = folder.cache.get(folder.dirs.summary, Path.read_text) or ""
    verdict_part = summary.split("## Verdict", 1)[-1] if "## Verdict" in summary else ""
    lines = {int(m.group(1)): m.group(2) for m in re.finditer(r"^(\d+)\. (.+)$", verdict_part,
                                                               re.MULTILINE)}
    out = []
    for i, claim in enumerate(folder.exp.claims, start=1):
        png = folder.dirs.claim_plot(i)
        out.append({"text": claim.text, "kind": claim.kind,
                    "metrics": list(claim.metrics) or [folder.exp.asha.metric],
                    "verdict": lines.get(i), "plot": png if png.exists() else None})
    return out


def summary(folder: Folder) -> str | None:
    """``report/summary.md``, None until the experiment has finished."""
    return folder.cache.get(folder.dirs.summary, Path.read_text)
