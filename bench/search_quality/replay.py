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

Policies (``policies``): the shipped population (8 rates per cell, one per stratum of the grid's
index range, each cell its own strata; halving 8 -> 3 -> 1 at 5/15/45% of the budget) with the
shipped pick (``tuner.service.search.pick``: a parabola in log lr through the members' values
at the last common rung, pooled with the grid neighbours' members); the same fit on the cell's
members alone; the old shipped pick (the full-budget survivor); random grid rates + the same
halving and the survivor; the one-rate path (TPE, Optuna's sampler as the service seeds it, +
ASHA with grace 10%, rf 3, one trial after another; TPE's rates snapped to the nearest grid
rate); the range's geometric middle.
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


def searched(cell: Cell, rng: np.random.Generator, k: int = 8, grace_share: float = 0.05,
             rf: float = 3, random_rates: bool = False
             ) -> tuple[list[float], list[dict[int, float]], int]:
    """One cell's population search: its members' rates, their curves as the halving leaves
    them, and the member steps spent."""
    n = len(cell.rates)
    members = ([int(i) for i in rng.choice(n, k, replace=False)] if random_rates
               else strata(n, k, rng))
    curves, spent = halving(cell, members, round(grace_share * cell.max_t), rf)
    return members, curves, spent


def population(cells: list[Cell], draw: int, fit: dict | None, pooled: bool = False,
               k: int = 8, grace_share: float = 0.05, rf: float = 3,
               random_rates: bool = False, near: dict[int, list[int]] | None = None
               ) -> list[tuple[float, float]]:
    """(regret, compute) per cell of one population search of the whole grid; each cell draws
    its own strata (as the service seeds them per cell). ``fit``: the pick's keyword arguments
    (None: the survivor); ``pooled``: the fit reads the grid neighbours' members too
    (``near``: cell index -> its neighbours' indices; default: every other cell)."""
    runs = [searched(c, np.random.default_rng([draw, 24, j]), k, grace_share, rf, random_rates)
            for j, c in enumerate(cells)]
    near = near or {j: [i for i in range(len(cells)) if i != j] for j in range(len(cells))}

    def seen(j: int) -> tuple[list[float], list[dict[int, float]]]:
        members, curves, _ = runs[j]
        return [float(cells[j].rates[i]) for i in members], curves

    out = []
    for j, (cell, (members, curves, spent)) in enumerate(zip(cells, runs, strict=True)):
        if fit is None:
            regret = cell.grid_regret(survivor(cell, members, curves))
        else:
            lo, hi = float(cell.rates[0]), float(cell.rates[-1])
            p = pick_rate(*seen(j), lo, hi, **fit,
                          neighbours=[seen(i) for i in near[j]] if pooled else ())
            regret = cell.regret_at(p.lr)
        out.append((regret, spent / (COMPUTE_RATES * cell.max_t)))
    return out


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


SHIPPED = "shipped: population 8, fit pooled with grid neighbours"
OLD = "old shipped: population 8, survivor"


def policies(fit: dict, near: dict[int, list[int]] | None = None
             ) -> dict[str, Callable[[list[Cell], int], list[tuple[float, float]]]]:
    """Policy name -> (cells, draw) -> (regret, compute) per cell."""
    def each(run: Callable[[Cell, int], tuple[float, float]]):
        return lambda cells, d: [run(c, d) for c in cells]

    return {
        SHIPPED: lambda cs, d: population(cs, d, fit, pooled=True, near=near),
        "population 8, fit on the cell alone": lambda cs, d: population(cs, d, fit),
        OLD: lambda cs, d: population(cs, d, None),
        "random rates + halving": lambda cs, d: population(cs, d, None, random_rates=True),
        "one rate per trial (TPE + ASHA)": each(lambda c, d: one_rate(c, d)),
        "fixed geometric middle": each(lambda c, d: (c.middle_mean / c.best - 1, 0.0)),
    }


def evaluate(cells: dict[str, Cell], fit: dict, draws: int = 50,
             only: tuple[str, ...] | None = None, near: dict[int, list[int]] | None = None
             ) -> dict[str, dict]:
    """Policy -> {"mean", "worst", "compute", "per_cell"}: per cell the mean over draws, then
    over cells (mean) and the worst cell (``only``: these policies)."""
    out = {}
    for name, run in policies(fit, near).items():
        if only is not None and name not in only:
            continue
        got = np.array([run(list(cells.values()), d)
                        for d in range(draws if "middle" not in name else 1)])  # draw, cell, 2
        per_cell = got[:, :, 0].mean(0)
        out[name] = {"mean": float(per_cell.mean()), "worst": float(per_cell.max()),
                     "compute": float(got[:, :, 1].mean()), "per_cell": list(per_cell)}
    return out
