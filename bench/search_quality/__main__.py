"""Search quality per compute against a dense ground truth (CPU, minutes).

    python -m bench.search_quality                      # dense grid, rank table, policies
    python -m bench.search_quality --policies today new --out out/sq

1. The dense grid (``dense.py``): every cell of ``grid.yaml`` trained at ``--rates`` log-spaced
   rates, the search's run with its whole curve and the finals' seeds at the full budget.
2. Rank correlation (Spearman) of each rate's value at every evaluation with its final value,
   over all rates and over the better half: where a rung can rank rates reliably.
3. Policies: each run for real through ``python -m tuner.run`` on a variant of ``grid.yaml``
   (``POLICIES``); plus, on the dense grid, random rates + ASHA (Ray's rule, 200 draws) and the
   range's geometric middle. Per cell: regret = the picked rate's seed-mean final value over
   the dense grid's best seed-mean, minus 1; compute = search steps over the dense grid's
   single-seed steps. Wall times of the real runs (search, finals, report) side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import spearmanr

from bench.search_quality.dense import dense
from tuner.service import experiment
from tuner.service.search.scheduler import CellRungs

GRID = Path(__file__).with_name("grid.yaml")
# search-section overrides per policy; "today" is the service before populations
POLICIES = {
    # the service before populations: one trial per rate, TPE + ASHA, workers reused
    "today": {"search": {"trials_per_cell": 8, "max_concurrent": 2, "population": 1},
              "asha": {"grace_period": 100, "reduction_factor": 3},
              "env": {"TUNER_REUSE_ACTORS": "1"}},
    # the default: one wave of 8 rates per cell, rungs at 5%, 15% and 45% of the budget, one
    # actor per trial (named in the dashboard)
    "pop8": {"search": {"trials_per_cell": 8, "max_concurrent": 2, "population": 8},
             "asha": {"grace_period": 50, "reduction_factor": 3}},
    "pop8-reuse": {"search": {"trials_per_cell": 8, "max_concurrent": 2, "population": 8},
                   "asha": {"grace_period": 50, "reduction_factor": 3},
                   "env": {"TUNER_REUSE_ACTORS": "1"}},
    # two waves of 4: the second takes a neighbour's best and TPE's proposals
    "pop4x2": {"search": {"trials_per_cell": 8, "max_concurrent": 2, "population": 4},
               "asha": {"grace_period": 50, "reduction_factor": 4}},
}


def rank_table(truth: dict) -> pd.DataFrame:
    rows = []
    for cell, d in truth["cells"].items():
        curves = d["search"][:-1]  # the grid, not the middle rate
        final = np.array([c.get(str(max(map(int, c)))) if c else np.nan for c in curves], float)
        steps = sorted({int(s) for c in curves for s in c})
        ok = np.isfinite(final)
        better = ok & (final <= np.nanmedian(final))
        for s in steps:
            at = np.array([c.get(str(s), np.nan) for c in curves], float)
            both = ok & np.isfinite(at)
            top = better & np.isfinite(at)
            rows.append({"cell": cell, "step": s, "rho_all": _rho(at, final, both),
                         "rho_better_half": _rho(at, final, top)})
    return pd.DataFrame(rows)


def _rho(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(spearmanr(a[mask], b[mask])[0]) if mask.sum() > 2 else math.nan


def _best_mean(truth: dict, cell: str) -> float:
    return float(np.nanmin([np.mean(f) for f in truth["cells"][cell]["finals"][:-1]]))


def simulated(truth: dict, exp, draws: int = 200) -> pd.DataFrame:
    """Random rates of the dense grid + ASHA (Ray's rule, one trial after another), and the
    fixed middle rate."""
    rng = np.random.default_rng(0)
    n = len(truth["rates"]) - 1
    rows = []
    for cell, d in truth["cells"].items():
        best = _best_mean(truth, cell)
        means = [np.mean(f) for f in d["finals"]]
        regrets, computes = [], []
        for _ in range(draws):
            rungs = CellRungs(exp.asha.grace_period, exp.max_t, exp.asha.reduction_factor)
            picks, spent = [], 0
            for i in rng.integers(0, n, exp.search.trials_per_cell):
                curve = {int(s): v for s, v in d["search"][i].items()}
                last = 0
                for s in sorted(curve):
                    last = s
                    v = curve[s]
                    if not math.isfinite(v):
                        break
                    if s >= exp.max_t:
                        picks.append((v, i))
                        rungs.on_result(f"t{len(picks)}-{spent}", s, -v)
                        break
                    if rungs.on_result(f"{i}-{spent}", s, -v) == "STOP":
                        break
                spent += last
            pick = min(picks)[1] if picks else n  # none finished: the middle rate
            regrets.append(means[pick] / best - 1)
            computes.append(spent / (n * exp.max_t))
        rows.append({"policy": "random+ASHA (sim)", "cell": cell, "regret": np.mean(regrets),
                     "compute": np.mean(computes)})
        rows.append({"policy": "fixed middle rate", "cell": cell, "regret": means[-1] / best - 1,
                     "compute": 0.0})
    return pd.DataFrame(rows)


def run_policy(name: str, out: Path, truth: dict, exp) -> tuple[pd.DataFrame, float]:
    raw = yaml.safe_load(GRID.read_text())
    for section, over in POLICIES[name].items():
        if section != "env":
            raw[section] = {**raw[section], **over}
    raw["name"] = f"sq-{name}"
    path = out / f"sq-{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    folder = out / f"sq-{name}"
    shutil.rmtree(folder, ignore_errors=True)  # a finished folder would only be read back
    started = time.perf_counter()
    env = dict(os.environ, JAX_PLATFORMS="cpu", **POLICIES[name].get("env", {}))
    res = subprocess.run([sys.executable, "-m", "tuner.run", str(path), "--out", str(out),
                          "--no-wandb", "--num-cpus", "2"], env=env, capture_output=True,
                         text=True)
    wall = time.perf_counter() - started
    (out / f"sq-{name}.log").write_text(res.stdout + res.stderr)
    if res.returncode:
        raise SystemExit(f"{name}: tuner.run failed, see {out}/sq-{name}.log")
    trials = pd.read_csv(folder / "search_trials.csv")
    finals = pd.DataFrame(json.loads((folder / "finals.json").read_text()))
    rows = []
    n = len(truth["rates"]) - 1
    for cell in truth["cells"]:
        mine = finals[finals.cell == cell][exp.asha.metric].mean()
        spent = trials[trials.cell == cell].last_step.fillna(0).sum()
        rows.append({"policy": name, "cell": cell, "regret": mine / _best_mean(truth, cell) - 1,
                     "compute": spent / (n * exp.max_t)})
    return pd.DataFrame(rows), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/search_quality"))
    ap.add_argument("--rates", type=int, default=16)
    ap.add_argument("--policies", nargs="*", default=list(POLICIES))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exp = experiment.load(str(GRID))
    cache = args.out / f"dense-{args.rates}.json"
    if not cache.exists():
        started = time.perf_counter()
        truth = dense(exp, args.rates)
        truth["wall_s"] = time.perf_counter() - started
        cache.write_text(json.dumps(truth))
    truth = json.loads(cache.read_text())
    print(f"dense grid: {args.rates} rates x {len(truth['cells'])} cells, "
          f"{truth['wall_s']:.0f} s")
    ranks = rank_table(truth)
    pd.set_option("display.width", 200)
    print("\nSpearman(value at step, final value), mean over cells [min, max]:")
    for s, g in ranks.groupby("step"):
        if s % 100 == 0 or s < 200:
            print(f"  step {s:5d}: all {g.rho_all.mean():5.2f} [{g.rho_all.min():5.2f}, "
                  f"{g.rho_all.max():5.2f}]  better half {g.rho_better_half.mean():5.2f} "
                  f"[{g.rho_better_half.min():5.2f}, {g.rho_better_half.max():5.2f}]")
    table = [simulated(truth, exp)]
    walls = {}
    for name in args.policies:
        frame, walls[name] = run_policy(name, args.out, truth, exp)
        table.append(frame)
    table = pd.concat(table)
    print("\nper cell:\n" + table.pivot(index="cell", columns="policy",
                                        values=["regret", "compute"]).round(4).to_string())
    summary = table.groupby("policy").agg(mean_regret=("regret", "mean"),
                                          worst_regret=("regret", "max"),
                                          compute=("compute", "mean"))
    summary["wall_s"] = pd.Series(walls)
    print("\nsummary (regret as a fraction, compute as a share of the dense grid):\n"
          + summary.round(4).to_string())
    (args.out / "summary.json").write_text(summary.to_json())


if __name__ == "__main__":
    main()
