"""The report's "Seeds needed" section: for every inconclusive claim, how many finals seeds
would settle it (80% power, :mod:`.power`) for the effect it observed and for the claim's
``min_effect``, and what they would cost, from the finals trials' measured times. A claim on
several metrics is planned on its first metric, which decides it (``verdicts.combine``); the
others are listed as the checks they are.

The remedy it prices is the one the service offers: grow ``finals.seeds`` in the experiment
file and rerun the same command; only the new seeds train (``stages.run_finals``), every cell
of the grid gets them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tuner.service.experiment import Claim, Experiment
from tuner.service.report import power
from tuner.service.report.verdicts import ClaimVerdict, Contrast, MetricVerdict
from tuner.service.trial_spec import TrialSpec


def seed_seconds(root: Path) -> dict[str, float]:
    """Cell -> wall seconds of one final seed, from the finals trials' Tune result files
    (``finals/`` and every ``finals-seeds-*/``): a trial's ``time_total_s`` over its seeds.
    A trial trains its seeds (of one cell or of a shared program) as one vmapped program, so
    this is their average share."""
    total: dict[str, list[float]] = {}
    for path in [*root.glob("finals/*/result.json"), *root.glob("finals-seeds-*/*/result.json")]:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        last = json.loads(lines[-1])
        config = last.get("config") or {}
        if "final" not in config or "time_total_s" not in last:
            continue
        members = TrialSpec.of(config).members  # one cell's seeds, or a shared program's
        share = float(last["time_total_s"]) / len(members)
        for m in members:
            seconds, seeds = total.setdefault(m.cell, [0.0, 0])
            total[m.cell] = [seconds + share, seeds + 1]
    return {cell: s / k for cell, (s, k) in total.items() if k}


def _metric_plan(claim: Claim, m: MetricVerdict) -> tuple[str, int | None, int | None]:
    """(text, seeds for the observed effect, seeds for min_effect) of one metric."""
    if not m.tests:
        return f"`{m.metric}`: no plan ({m.evidence})", None, None
    observed = [t.estimate for t in m.tests]
    sds = [sd for t in m.tests for sd in t.sd.values() if math.isfinite(sd)]
    n_now = sorted({n for t in m.tests for n in t.n.values()})
    against = any(e * m.direction < 0 for e in observed)
    n_obs = power.seeds_needed(m.tests, observed)
    what = ", ".join(f"{t.label} {t.estimate:+.3g}" for t in m.tests)
    spread = f"{min(sds):.2g}" + (f"-{max(sds):.2g}" if f"{max(sds):.2g}" != f"{min(sds):.2g}"
                                  else "")
    text = (f"`{m.metric}`: observed {what}{' (against the claim)' if against else ''} (seed "
            f"sd per cell {spread}, {'/'.join(map(str, n_now))} seeds): {_seeds(n_obs)} for "
            "80% power")
    size = claim.min_effect_of(m.metric)
    n_min = None
    if size is not None:
        n_min = power.seeds_needed(m.tests, [size * m.direction] * len(m.tests))
        text += f"; for min_effect {size:g}: {_seeds(n_min)}"
    return text, n_obs, n_min


def _observed(m: MetricVerdict) -> str:
    """A check metric's contrasts, those against the claim marked."""
    return ", ".join(f"{t.label} {t.estimate:+.3g}"
                     + (" (against the claim)" if t.estimate * m.direction < 0 else "")
                     for t in m.tests)


def _seeds(n: int | None) -> str:
    return f"**{n} seeds**" if n is not None else f"more than {power.MAX_SEEDS} seeds"


def _cost(exp: Experiment, n: int, seconds: dict[str, float]) -> str:
    more = n - len(exp.finals.seeds)
    if more <= 0:
        return "no more seeds than the file has (the seeds' spread may shrink with more data)"
    cells = list(exp.cells())
    known = [seconds[c] for c in cells if c in seconds]
    head = f"{more} more for each of the {len(cells)} cells"
    if not known:
        return head + ": cost unknown (no finals trial times under finals*/)"
    per_seed = sum(known) / len(known)  # cells without a timed trial: the mean of the others
    hours = more * sum(seconds.get(c, per_seed) for c in cells) / 3600
    gpus = exp.resources.gpus_per_trial
    gpu = f"≈ {hours * gpus:.3g} GPU-hours" if gpus else "0 GPU-hours (gpus_per_trial 0)"
    return (f"{head}: {gpu}, {hours:.3g} h of trial time ({per_seed:.3g} s per seed of a "
            "cell, measured)")


def _learning_plan(gaps: dict[str, tuple[Contrast, float]]) -> tuple[list[str], int | None]:
    """The seeds at which each cell that failed the learning check would pass it (one-sided,
    80% power) if its mean is what was measured; None: some cell cannot."""
    texts, worst = [], 0
    for cell, (c, above) in gaps.items():
        n = power.seeds_needed([c], [above], sides=1) if above > 0 else None
        where = "at or below the floor" if above <= 0 else "barely above the floor"
        texts.append(f"{cell}: {_seeds(n)}" if n is not None else
                     f"{cell}: mean {where} ({c.estimate:.3g}), more than {power.MAX_SEEDS} "
                     "seeds")
        worst = None if n is None or worst is None else max(worst, n)
    return texts, worst


def lines(exp: Experiment, claim_verdicts: list[ClaimVerdict], plan_verdicts: list[ClaimVerdict],
          learning: dict[str, tuple[Contrast, float]], root: Path) -> list[str]:
    """The section's markdown lines (none when no claim is inconclusive). ``plan_verdicts``:
    the claims judged without the learning check (a cell left out by it still has a spread
    to plan from); ``learning``: the cells that failed the learning check only, with their gap
    (``render._learning_gaps``): their seeds count too. Bullets, not numbers: readers of the
    summary take its numbered lines after "## Verdict" as the verdicts
    (``render.verdict_lines``, the viewer)."""
    seconds = seed_seconds(root)
    learn_texts, learn_n = _learning_plan(learning)
    out = []
    for i, (claim, v, pv) in enumerate(zip(exp.claims, claim_verdicts, plan_verdicts,
                                           strict=True)):
        if v.verdict != "inconclusive":
            continue
        # the first metric decides (verdicts.combine): its plan is the claim's; the others
        # are shown as the checks they are (they must not contradict it)
        first, *checks = pv.per_metric
        plan = _metric_plan(claim, first)
        text = plan[0] + "".join(
            f"; `{m.metric}` (a check: must not contradict `{first.metric}`): "
            + (f"contradicts it ({_observed(m)})" if m.metric in v.against else
               f"observed {_observed(m)}" if m.tests else m.evidence)
            for m in checks) + "."
        if v.against:
            text += (f" The claim is inconclusive because {', '.join(f'`{m}`' for m in v.against)}"
                     f" contradicts `{first.metric}`: more seeds settle it only if the "
                     "contradiction was the seeds' noise.")
        if learning:
            text += (" Cells left out by the learning check would pass it (80% power, its "
                     "one-sided test) at: " + "; ".join(learn_texts) + ".")
        costs = []
        for k, label in ((1, "for the observed effect"), (2, "for min_effect")):
            if k == 2 and claim.min_effect_of(first.metric) is None:
                continue  # a min_effect of a check metric sizes no plan
            n_claim = plan[k]
            if n_claim is None:
                costs.append(f"{label}: no plan within {power.MAX_SEEDS} seeds")
            elif not learning or (learn_n is not None and learn_n <= n_claim):
                costs.append(f"{label}: {_seeds(n_claim)} = {_cost(exp, n_claim, seconds)}")
            elif learn_n is not None:
                costs.append(f"{label}: {_seeds(learn_n)} (the learning check's) = "
                             f"{_cost(exp, learn_n, seconds)}")
            else:
                costs.append(f"{label}: {_seeds(n_claim)} for the claim's test = "
                             f"{_cost(exp, n_claim, seconds)}, but the learning check does not "
                             f"pass within {power.MAX_SEEDS} seeds in every cell")
        out.append(f"- claim {i + 1}, **{claim.text}** ({v.verdict}). {text} Cost: "
                   + "; ".join(costs) + ".")
    if not out:
        return []
    return ["", "## Seeds needed", "",
            "For each inconclusive claim: the finals seeds per cell at which its test would "
            "reach 80% power for the effect these finals observed (and for the claim's "
            "`min_effect`, where declared), from the measured seed spread "
            "(tuner/service/report/power.py), judged as if every cell had passed the learning "
            "check; the cells that did not must pass it as well. A claim on several metrics "
            "is planned on its first, which decides it (the others must not contradict it). "
            f"To add seeds, extend `finals.seeds` in `{exp.path}` (keep the old ones) and rerun "
            "the same command: only the new seeds train, the report is rewritten.", "", *out]
