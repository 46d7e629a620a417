"""Power of the report's judge on synthetic finals whose truth is known (issue 26), old vs new.

The setup of the issue: the real grids of exp1-exp4 (full size), 3 seeds per cell, seed sd
0.01 on ``eval/nmse_info`` (the claim judged on that one metric, no learning check), and a true
effect of k sd per grid step along the claim's axis:

- ``trend``: badness rises by k sd per step of the axis, in the claimed direction;
- ``compare``: every other value is k sd worse than ``better`` per step away from it;
- ``effect_trend`` / ``effect_compare``: the effect of ``effect_axis`` (its largest value
  minus its smallest) changes by k sd per step of the claim's axis, the way the claim says,
  spread linearly over the effect axis' positions (log2 patch size), so every patch size
  carries its share.

k = 0 is pure noise: the rate there is the false-verdict rate (either decisive verdict). The
"ideal z" columns are the power of the judge's decisive contrast with the true sd known
(normal quantiles, no Spearman condition), old (two ends of the effect axis) and new (slope).

    uv run python -m bench.power_table [--grids 1000] [--seed 0]     # CPU, ~10 min
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from bench import old_verdicts
from tuner.service import experiment
from tuner.service.report import verdicts

SD = 0.01
SEEDS = 3
METRIC = "eval/nmse_info"
EFFECTS = (0, 1, 2, 4, 8)
CLAIMS = [("exp1", 0), ("exp2", 0), ("exp3", 0), ("exp3", 1), ("exp4", 1)]


def truth(claim, exp: experiment.Experiment, k: float) -> Callable[[dict], float]:
    """Cell values -> the true badness (1 + k sd x the claim's pattern)."""
    axis_values = list(exp.grid[claim.axis])

    def step(over: dict) -> float:
        i = axis_values.index(over[claim.axis])
        if claim.kind.endswith("trend"):
            return i if claim.direction == "increasing" else len(axis_values) - 1 - i
        return abs(i - axis_values.index(claim.better))

    if not claim.kind.startswith("effect"):
        return lambda over: 1.0 + k * SD * step(over)
    effect_values = sorted(exp.grid[claim.effect_axis])
    x = verdicts.positions(effect_values)
    frac = dict(zip(effect_values, (x - x.min()) / (x.max() - x.min()), strict=True))
    return lambda over: 1.0 + k * SD * step(over) * frac[over[claim.effect_axis]]


def simulate(exp, claim, k: float, rng: np.random.Generator) -> pd.DataFrame:
    f = truth(claim, exp, k)
    rows = [{"cell": c, **over, "seed": s, "diverged": False, "step": exp.max_t,
             METRIC: f(over) + SD * rng.standard_normal()}
            for c, over in exp.cells().items() for s in range(SEEDS)]
    return pd.DataFrame(rows)


def verdict(module, exp, claim, finals: pd.DataFrame) -> str:
    table = module.cell_table(exp.cells(), finals, METRIC)
    claim = dataclasses.replace(claim, metrics=(METRIC,))
    return module.judge(claim, {METRIC: table}, {METRIC: "min"}, {}).verdict


def ideal_z(exp, claim, k: float, module) -> float:
    """Power of the decisive contrast with the true sd, from the judge's own coefficients."""
    rng = np.random.default_rng(0)
    finals = simulate(exp, claim, k, rng)
    table = verdicts.cell_table(exp.cells(), finals, METRIC)
    truth_of = truth(claim, exp, k)
    table["mean"] = [truth_of(dict(zip(exp.grid, r, strict=True)))
                     for r in table[list(exp.grid)].itertuples(index=False)]
    table["se"] = SD / math.sqrt(SEEDS)
    if module == "old" and claim.kind.startswith("effect"):  # the two ends only
        ends = sorted(exp.grid[claim.effect_axis])
        table = table[table[claim.effect_axis].isin([ends[0], ends[-1]])]
    coefs = (verdicts.effect_coefs(table, claim.effect_axis, claim.axis)
             if claim.kind.startswith("effect") else verdicts.level_coefs(table, claim.axis))
    values = list(coefs)
    if claim.kind.endswith("trend"):
        tests = [verdicts.coef_difference(coefs[values[-1]], coefs[values[0]])]
    else:
        tests = [verdicts.coef_difference(c, coefs[claim.better]) for v, c in coefs.items()
                 if v != claim.better]
    power = 1.0
    for coef in tests:
        c = verdicts.contrast(table, coef)
        z = abs(c.estimate) / c.se
        q = stats.norm.ppf(0.975)
        power *= stats.norm.cdf(z - q) + stats.norm.cdf(-z - q)  # independent enough
    return power


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{args.grids} grids per entry, {SEEDS} seeds/cell, sd {SD} on {METRIC}; "
          "rate judged 'supported' (k = 0: either decisive verdict)\n")
    print("| claim | judge | noise (0 sd) | 1 sd | 2 sd | 4 sd | 8 sd | ideal z at 2 sd |")
    print("|---|---|---|---|---|---|---|---|")
    for name, index in CLAIMS:
        exp = experiment.load(name)
        claim = exp.claims[index]
        axes = f"{claim.effect_axis} x {claim.axis}" if claim.effect_axis else claim.axis
        label = f"{name} {claim.kind} ({axes})"
        for judge_name, module in (("old", old_verdicts), ("new", verdicts)):
            rng = np.random.default_rng(args.seed)
            rates = []
            for k in EFFECTS:
                hits = 0
                for _ in range(args.grids):
                    v = verdict(module, exp, claim, simulate(exp, claim, k, rng))
                    hits += v in verdicts.DECISIVE if k == 0 else v == "supported"
                rates.append(hits / args.grids)
            print(f"| {label} | {judge_name} | " + " | ".join(f"{r:.1%}" for r in rates)
                  + f" | {ideal_z(exp, claim, 2, judge_name):.0%} |", flush=True)


if __name__ == "__main__":
    main()
