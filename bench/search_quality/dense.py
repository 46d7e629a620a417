"""The ground truth of the search-quality benchmark: every rate of a fine log grid trained in
every cell, the search's run (search seed, the file's system; its whole curve) and the finals'
runs (each seed on its own system, scored on the finals' held-out key), as populations
(tuner.core.population: one vmapped program per cell, no member stopped)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tuner.core.config import replace
from tuner.core.population import Population, train_population
from tuner.core.seeds import search_config, seed_config
from tuner.service.experiment import Experiment
from tuner.service.trials import trial_config


def grid_rates(exp: Experiment, n: int) -> list[float]:
    """``n`` log-spaced rates over the range, and its geometric middle (the fixed-rate policy)."""
    rates = list(np.geomspace(exp.search.lr_low, exp.search.lr_high, n))
    return [float(r) for r in rates] + [math.sqrt(exp.search.lr_low * exp.search.lr_high)]


def _run(configs, metric: str) -> list[dict[int, float]]:
    """Each member's metric per evaluation step (NaN from the step it diverged)."""
    curves: list[dict[int, float]] = [{} for _ in configs]

    def on_eval(step, progress, states):
        for i, m in enumerate(progress.last):
            if m.get("step") == step:
                curves[i][step] = m.get(metric, math.nan) if not m.get("diverged") else math.nan

    train_population(Population(configs), on_eval, lambda *a: set())
    return curves


def dense(exp: Experiment, n_rates: int) -> dict[str, Any]:
    """Per cell: the rates, the search run's curve per rate, the finals' final value per rate
    and seed."""
    out: dict[str, Any] = {"rates": grid_rates(exp, n_rates), "metric": exp.asha.metric,
                           "seeds": list(exp.finals.seeds), "cells": {}}
    for cell, over in exp.cells().items():
        base = [trial_config(exp.base, {"overrides": over, "lr": lr}) for lr in out["rates"]]
        search = _run([replace(search_config(c), **{"train.diagnostics_every": 0}) for c in base],
                      exp.asha.metric)
        finals = _run([seed_config(c, s) for c in base for s in exp.finals.seeds], exp.asha.metric)
        k = len(exp.finals.seeds)
        out["cells"][cell] = {
            "search": [{str(s): v for s, v in c.items()} for c in search],
            "finals": [[finals[i * k + j].get(exp.max_t, math.nan) for j in range(k)]
                       for i in range(len(base))]}
        print(f"dense: {cell} done", flush=True)
    return out
