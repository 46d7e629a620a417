"""Power of the report's judge on synthetic finals whose truth is known: the rule for claims
on several metrics before issue 33 (every metric must count: intersection-union) against the
current one (the first metric decides, the others must not contradict it).

Every shipped claim of exp1-exp4, judged as shipped (``metrics: [eval/nmse_info,
eval/skill_info]``, no learning check), on the experiments' real grids with 3 seeds a cell:

- ``eval/nmse_info`` = 1 + BASE + k * SD * pattern + SD * noise (SD 0.01 a seed), the claim's
  pattern as in issue 26: ``trend``: badness rises by k sd per step of the axis, the claimed
  way; ``compare``: every other value is k sd worse than ``better`` per step away from it;
  effect claims: the effect of ``effect_axis`` (largest minus smallest) changes by k sd per
  step of the claim's axis, spread linearly over the effect axis' positions (log2 patch);
- ``eval/skill_info`` of the same seed = 1 - (nmse_info - 1) / gain: the share of the
  learnable gain (zero predictor / information-limited KF - 1) the model found, where each
  seed trains on its own system, so its gain is GAIN x a lognormal factor of relative sd
  GAIN_CV. GAIN 0.2 is that gain at lambda 0.96-0.98 and GAIN_CV 0.3 its spread over system
  seeds 0-2 in exp1-exp4's cells (0.1-0.45, from data.kalman); BASE 0.04 puts the skill near
  0.8, as the H200 runs of the hard setting measured (0.65-0.79). The skill so carries the
  same effect with the system's spread on top.

k = 0 is pure noise: the rate there is that of either decisive verdict. "decided against" is
the share of decisive verdicts (over every k) while one of the claim's metrics has a contrast
beyond its 95% threshold the other way (``verdicts.contradicts``). "ideal z" is the power of
the first metric's decisive contrast with the true sd known (normal quantiles, no Spearman
condition). The old rule is the judge at ``OLD_REV``, read with ``git show`` (a clone with its
history is needed).

    uv run python -m bench.power_table [--grids 300] [--noise-grids 1000]  # CPU, ~10 min
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from tuner.service import experiment
from tuner.service.report import verdicts

SD = 0.01
SEEDS = 3
BASE = 0.04
GAIN = 0.2
GAIN_CV = 0.3
NMSE, SKILL = "eval/nmse_info", "eval/skill_info"
MODES = {NMSE: "min", SKILL: "max"}
EFFECTS = (0, 1, 2)
CLAIMS = [("exp1", 0), ("exp2", 0), ("exp3", 0), ("exp3", 1), ("exp4", 0), ("exp4", 1)]
OLD_REV = "9bf3c908fd8628bb4f1f2cf198bdb326d37a762b"  # main before issue 33: every metric counts
OLD_PATH = "tuner/service/report/verdicts.py"


def old_judge_module(rev: str = OLD_REV) -> types.ModuleType:
    """The judge module as it was at ``rev`` (``git show``), loaded under its own name."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{OLD_PATH}"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"bench.verdicts_{rev[:7]}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev[:7]}:{OLD_PATH}", "exec"), module.__dict__)  # noqa: S102
    return module


def truth(claim, exp: experiment.Experiment, k: float) -> Callable[[dict], float]:
    """Cell values -> the true nmse_info shortfall (BASE + k sd x the claim's pattern)."""
    axis_values = list(exp.grid[claim.axis])

    def step(over: dict) -> float:
        i = axis_values.index(over[claim.axis])
        if claim.kind.endswith("trend"):
            return i if claim.direction == "increasing" else len(axis_values) - 1 - i
        return abs(i - axis_values.index(claim.better))

    if not claim.kind.startswith("effect"):
        return lambda over: BASE + k * SD * step(over)
    effect_values = sorted(exp.grid[claim.effect_axis])
    x = verdicts.positions(effect_values)
    frac = dict(zip(effect_values, (x - x.min()) / (x.max() - x.min()), strict=True))
    return lambda over: BASE + k * SD * step(over) * frac[over[claim.effect_axis]]


def simulate(exp, claim, k: float, rng: np.random.Generator) -> pd.DataFrame:
    """Finals rows of one synthetic grid: both metrics per seed (see the module docstring)."""
    f = truth(claim, exp, k)
    rows = []
    for c, over in exp.cells().items():
        for s in range(SEEDS):
            shortfall = f(over) + SD * rng.standard_normal()
            gain = GAIN * math.exp(GAIN_CV * rng.standard_normal() - GAIN_CV**2 / 2)
            rows.append({"cell": c, **over, "seed": s, "diverged": False, "step": exp.max_t,
                         NMSE: 1.0 + shortfall, SKILL: 1.0 - shortfall / gain})
    return pd.DataFrame(rows)


def judged(module, exp, claim, tables: dict[str, pd.DataFrame], metrics: tuple[str, ...]):
    """``module``'s verdict on ``claim`` read on ``metrics`` (tables: metric -> cell table)."""
    claim = dataclasses.replace(claim, metrics=metrics)
    return module.judge(claim, {m: tables[m] for m in metrics}, {m: MODES[m] for m in metrics},
                        {})


def decided_against(v) -> bool:
    """A decisive verdict while one of the claim's metrics contradicts it."""
    return v.verdict in verdicts.DECISIVE and any(
        verdicts.contradicts(m, v.verdict) for m in v.per_metric)


def ideal_z(exp, claim, k: float) -> float:
    """Power of the first metric's decisive contrast with the true sd (normal quantiles)."""
    finals = simulate(exp, claim, k, np.random.default_rng(0))
    table = verdicts.cell_table(exp.cells(), finals, NMSE)
    truth_of = truth(claim, exp, k)
    table["mean"] = [truth_of(dict(zip(exp.grid, r, strict=True)))
                     for r in table[list(exp.grid)].itertuples(index=False)]
    table["se"] = SD / math.sqrt(SEEDS)
    coefs = (verdicts.effect_coefs(table, claim.effect_axis, claim.axis)
             if claim.kind.startswith("effect") else verdicts.level_coefs(table, claim.axis))
    values = list(coefs)
    if claim.kind.endswith("trend"):
        tests = [verdicts.coef_difference(coefs[values[-1]], coefs[values[0]])]
    else:
        tests = [verdicts.coef_difference(c, coefs[claim.better]) for v, c in coefs.items()
                 if v != claim.better]
    power = 1.0
    q = stats.norm.ppf(0.975)
    for coef in tests:
        c = verdicts.contrast(table, coef)
        z = abs(c.estimate) / c.se
        power *= stats.norm.cdf(z - q) + stats.norm.cdf(-z - q)  # independent enough
    return power


def rates(exp, claims: list, judges: dict, grids: int, noise_grids: int, seed: int
          ) -> list[dict[str, tuple[list[float], float]]]:
    """Per claim: judge name -> (rate per k of EFFECTS, share of its decisive verdicts decided
    against). One pure-noise grid serves every claim of the experiment."""
    rng = np.random.default_rng(seed)
    hits = [{name: [0] * len(EFFECTS) for name in judges} for _ in claims]
    against = [{name: [0, 0] for name in judges} for _ in claims]  # against, decisive

    def judge_all(j: int, claim, finals: pd.DataFrame, i: int, k: float) -> None:
        tables = {m: verdicts.cell_table(exp.cells(), finals, m) for m in MODES}
        for name, (module, metrics) in judges.items():
            v = judged(module, exp, claim, tables, metrics)
            hits[j][name][i] += (v.verdict in verdicts.DECISIVE if k == 0
                                 else v.verdict == "supported")
            if v.verdict in verdicts.DECISIVE:
                against[j][name][0] += decided_against(v)
                against[j][name][1] += 1

    for i, k in enumerate(EFFECTS):
        for _ in range(noise_grids if k == 0 else grids):
            if k == 0:
                finals = simulate(exp, claims[0], 0, rng)
            for j, claim in enumerate(claims):
                judge_all(j, claim, finals if k == 0 else simulate(exp, claim, k, rng), i, k)
    return [{name: ([h / (noise_grids if k == 0 else grids) for h, k in zip(
        hits[j][name], EFFECTS, strict=True)], against[j][name][0] / max(against[j][name][1], 1))
        for name in judges} for j in range(len(claims))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=300, help="grids per k > 0")
    parser.add_argument("--noise-grids", type=int, default=1000, help="grids at k = 0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    old = old_judge_module()
    judges = {"old (every metric)": (old, (NMSE, SKILL)),
              "**new (first decides)**": (verdicts, (NMSE, SKILL)),
              "nmse_info alone": (verdicts, (NMSE,))}
    print(f"{args.grids} grids per k > 0, {args.noise_grids} at k = 0, {SEEDS} seeds/cell, "
          f"sd {SD} on {NMSE}, skill gain {GAIN} (cv {GAIN_CV}), base shortfall {BASE}\n")
    print("| claim | rule | noise (0 sd) | 1 sd | 2 sd | decided against | ideal z at 2 sd |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(n for n, _ in CLAIMS):
        exp = experiment.load(name)
        claims = [exp.claims[i] for n, i in CLAIMS if n == name]
        for claim, by_rule in zip(claims, rates(exp, claims, judges, args.grids,
                                                args.noise_grids, args.seed), strict=True):
            assert claim.metrics == (NMSE, SKILL), claim.metrics  # judged as shipped
            axes = f"{claim.effect_axis} x {claim.axis}" if claim.effect_axis else claim.axis
            z = ideal_z(exp, claim, 2)
            for rule, (r, a) in by_rule.items():
                print(f"| {name} {claim.kind} ({axes}) | {rule} | "
                      + " | ".join(f"{x:.1%}" for x in r) + f" | {a:.1%} | {z:.0%} |",
                      flush=True)


if __name__ == "__main__":
    main()
