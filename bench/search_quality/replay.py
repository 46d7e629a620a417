"""Search policies replayed on a dense ground truth (``dense.py``'s JSON): no training.

Every member of a search trains as it would alone (a population is K independent runs in one
vmapped program, each on the search seed and the file's system), so a search at grid rates
sees exactly the dense grid's search curves: a policy is replayed by choosing grid rates,
stopping them where its rule stops them, and picking. Regret is the picked rate's seed-mean
final value (the finals' seeds, systems and key) over the dense grid's best, minus 1; a pick
between grid rates (the fitted pick) is scored by linear interpolation of that seed-mean in
log lr between its two grid neighbours, which near a convex optimum overstates its value (the
chord lies above the curve): the fit is not flattered. Compute: member steps over the dense
grid's single-seed steps at 16 rates (issue 24's grid; the table stays comparable whatever
``--rates`` the truth has).

Policies (``POLICIES``): the shipped population (8 rates, one per stratum of the grid's index
range, halving 8 -> 3 -> 1 at 5/15/45% of the budget, pick the full-budget survivor); the same
with the fitted pick (``tuner.service.search.pick``); random grid rates + the same halving; the
one-rate path (TPE, Optuna's sampler as the service seeds it, + ASHA with grace 10%, rf 3, one
trial after another; TPE's rates snapped to the nearest grid rate); the range's geometric
middle.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import optuna

from tuner.service.search.halving import keep_count, rungs
from tuner.service.search.pick import pick_rate
from tuner.service.search.scheduler import CellRungs

optuna.logging.set_verbosity(optuna.logging.WARNING)
COMPUTE_RATES = 16  # compute is a share of a 16-rate grid's steps (issue 24's), whatever --rates


class Cell:
    """One cell of a dense ground truth: grid rates, search curves, seed-mean finals."""

    def __init__(self, rates: list[float], data: dict, max_t: int) -> None:
        n = len(rates) - 1  # the last rate is the range's middle, not part of the grid
        self.rates = np.array(rates[:n])
        self.middle = rates[n]
        self.curves = [{int(s): (math.nan if v is None else float(v)) for s, v in c.items()}
                       for c in data["search"][:n]]
        means = np.array([np.mean([math.nan if v is None else v for v in f])
                          for f in data["finals"]], float)
        self.means, self.middle_mean = means[:n], float(means[n])
        self.best = float(np.nanmin(self.means))
        self.max_t = max_t
        order = np.argsort(np.log(rates))
        self._x = np.log(np.asarray(rates, float))[order]
        self._y = means[order]

    def regret_at(self, lr: float) -> float:
        """Seed-mean final value at ``lr`` (log-linear between grid rates) / best - 1."""
        ok = np.isfinite(self._y)
        value = float(np.interp(math.log(lr), self._x[ok], self._y[ok])) if ok.any() else math.nan
        # a rate next to a diverged one: the nearer grid rate's value if that one diverged
        near = int(np.argmin(abs(self._x - math.log(lr))))
        if not math.isfinite(self._y[near]):
            return math.inf
        return value / self.best - 1

    def grid_regret(self, i: int) -> float:
        return float(self.means[i] / self.best - 1) if math.isfinite(self.means[i]) else math.inf


def halving(cell: Cell, members: list[int], grace: int, rf: float
            ) -> tuple[list[dict[int, float]], int]:
    """The members' curves as the population's halving leaves them (cut where stopped or
    diverged) and the member steps spent (SuccessiveHalving: rungs on all at once)."""
    if len(set(members)) != len(members):
        raise ValueError(f"members {members}: one per grid rate")
    alive = list(members)
    seen = {i: {} for i in alive}
    stopped_at = {}
    steps = sorted(cell.curves[alive[0]])
    marks = rungs(grace, rf, cell.max_t)
    previous = 0
    for step in steps:
        for i in list(alive):
            v = cell.curves[i].get(step, math.nan)
            seen[i][step] = v
            if not math.isfinite(v):  # diverged: the loop stops the member
                alive.remove(i)
                stopped_at[i] = step
        if any(previous < r <= step for r in marks) and alive:
            ranked = sorted(alive, key=lambda i: (seen[i][step], i))
            for i in ranked[keep_count(len(alive), rf):]:
                alive.remove(i)
                stopped_at[i] = step
        previous = step
    spent = sum(stopped_at.get(i, cell.max_t) for i in seen)
    return [seen[i] for i in members], spent


def strata(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` distinct grid indices, one uniformly within each of ``k`` contiguous groups of the
    index range (as equal as ``n`` allows)."""
    return [int(rng.choice(g)) for g in np.array_split(np.arange(n), k)]


def survivor(cell: Cell, members: list[int], curves: list[dict[int, float]]) -> int:
    """The shipped pick: the best member that reached the full budget."""
    done = [(c[cell.max_t], i) for i, c in zip(members, curves, strict=True)
            if math.isfinite(c.get(cell.max_t, math.nan))]
    return min(done)[1] if done else members[0]


def population(cell: Cell, rng: np.random.Generator, fit: dict | None, k: int = 8,
               grace_share: float = 0.05, rf: float = 3, random_rates: bool = False
               ) -> tuple[float, float]:
    """(regret, compute) of one population search; ``fit``: the pick's keyword arguments
    (None: the survivor)."""
    n = len(cell.rates)
    members = ([int(i) for i in rng.choice(n, k, replace=False)] if random_rates
               else strata(n, k, rng))
    grace = round(grace_share * cell.max_t)
    curves, spent = halving(cell, members, grace, rf)
    if fit is None:
        regret = cell.grid_regret(survivor(cell, members, curves))
    else:
        lo, hi = float(cell.rates[0]), float(cell.rates[-1])
        p = pick_rate([float(cell.rates[i]) for i in members], curves, lo, hi, **fit)
        regret = cell.regret_at(p.lr)
    return regret, spent / (COMPUTE_RATES * cell.max_t)


def one_rate(cell: Cell, seed: int, trials: int = 8, grace_share: float = 0.1, rf: float = 3
             ) -> tuple[float, float]:
    """(regret, compute) of the one-rate path: TPE proposals, ASHA per result, in order."""
    lo, hi = float(cell.rates[0]), float(cell.rates[-1])
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)),
                                         constant_liar=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    asha = CellRungs(round(grace_share * cell.max_t), cell.max_t, rf)
    spent, done = 0, []
    for t in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", lo, hi, log=True)
        i = int(np.argmin(abs(np.log(cell.rates) - math.log(lr))))
        last, state, value = 0, optuna.trial.TrialState.PRUNED, None
        for step in sorted(cell.curves[i]):
            v = cell.curves[i][step]
            last = step
            if not math.isfinite(v):
                break
            trial.report(v, step)
            if step >= cell.max_t:
                state, value = optuna.trial.TrialState.COMPLETE, v
                done.append((v, i))
                asha.on_result(f"t{t}", step, -v)
                break
            if asha.on_result(f"t{t}", step, -v) == "STOP":
                break
        spent += last
        study.tell(trial, value, state=state)
    regret = cell.grid_regret(min(done)[1]) if done else cell.middle_mean / cell.best - 1
    return regret, spent / (COMPUTE_RATES * cell.max_t)


def policies(fit: dict) -> dict[str, Callable[[Cell, int], tuple[float, float]]]:
    """Policy name -> (cell, draw) -> (regret, compute)."""
    def rng(draw: int) -> np.random.Generator:
        return np.random.default_rng([draw, 24])

    return {
        "shipped (population 8, survivor)": lambda c, d: population(c, rng(d), None),
        "population 8, fitted pick": lambda c, d: population(c, rng(d), fit),
        "random rates + halving": lambda c, d: population(c, rng(d), None, random_rates=True),
        "one rate per trial (TPE + ASHA)": lambda c, d: one_rate(c, d),
        "fixed geometric middle": lambda c, d: (c.middle_mean / c.best - 1, 0.0),
    }


def evaluate(cells: dict[str, Cell], fit: dict, draws: int = 50,
             only: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Policy -> {"mean", "worst", "compute"}: per cell the mean over draws, then over cells
    (mean) and the worst cell (``only``: these policies)."""
    out = {}
    for name, run in policies(fit).items():
        if only is not None and name not in only:
            continue
        per_cell, compute = [], []
        for cell in cells.values():
            got = np.array([run(cell, d) for d in range(draws if "middle" not in name else 1)])
            per_cell.append(got[:, 0].mean())
            compute.append(got[:, 1].mean())
        out[name] = {"mean": float(np.mean(per_cell)), "worst": float(np.max(per_cell)),
                     "compute": float(np.mean(compute)), "per_cell": per_cell}
    return out
