"""The judge of the report on inputs whose answer is known.

- Oracles: the information-limited optimum (the Kalman filter that sees what a patch-P model
  sees) and the zero predictor, fed as the finals of experiments 1-4 at their full size (each
  final seed on its own system, as the finals run). Neither is evidence about transformers, so
  no learning-difficulty claim may get a decisive verdict from them. Their exact expected
  errors come from data.kalman, and the metrics are recomputed here from their definitions.
- The same oracles under the old judge (plain ``eval/nmse``, no learning check) do get
  decisive verdicts: the oracle tests would fail if the judge were reverted.
- Pure noise: a grid whose axes have no effect is judged decisive in at most 5% of 1,000
  simulated grids; a strong effect is found, in the right direction.
- One seed is never decisive; a cell whose seeds all diverged is reported and the report is
  still written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import kalman, lds
from tuner.core.config import replace
from tuner.core.seeds import seed_config
from tuner.service import experiment
from tuner.service.report import render as report
from tuner.service.report import verdicts

FIXTURES = Path(__file__).parent / "fixtures"


@functools.cache
def _baselines(data: lds.LDSConfig, patch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, c = lds.make_system_np(data)
    system = lds.System(a, c, data.sigma)
    return (kalman.one_step_mse(system, data.seq_len),
            kalman.patched_mse(system, data.seq_len, patch), kalman.zero_mse(system, data.seq_len))


def _metrics(err: np.ndarray, kf: np.ndarray, info: np.ndarray, zero: np.ndarray) -> dict:
    """SPEC section 2's metrics over y_2..y_T, from their definitions."""
    e, k, i, z = (x[1:].sum() for x in (err, kf, info, zero))
    return {"eval/nmse": e / k, "eval/skill": (z - e) / (z - k), "eval/nmse_info": e / i,
            "eval/skill_info": (z - e) / (z - i), "eval/info_cost": i / k}


@functools.cache
def oracle_finals(name: str, predictor: str) -> pd.DataFrame:
    """The finals rows ``predictor`` ("info" optimum or "zero") would produce for ``name``."""
    exp = experiment.load(name)
    rows = []
    for cell, over in exp.cells().items():
        for seed in exp.seeds:
            cfg = seed_config(replace(exp.base, **over), seed)
            kf, info, zero = _baselines(cfg.data, cfg.model.patch_size)
            err = info if predictor == "info" else zero
            rows.append({"cell": cell, "seed": seed, **over, "step": exp.max_t,
                         "diverged": False, **_metrics(err, kf, info, zero)})
    return pd.DataFrame(rows)


EXPERIMENTS = ["exp1", "exp2", "exp3", "exp4"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_information_limited_optimum_earns_no_verdict(name):
    exp = experiment.load(name)
    assert exp.claims and all(c.metrics for c in exp.claims)  # each claim names its metrics
    results, _, unusable = report.judge_all(exp, oracle_finals(name, "info"))
    assert not unusable  # the optimum beats the zero predictor everywhere
    for claim, v in zip(exp.claims, results, strict=True):
        assert v.verdict not in verdicts.DECISIVE, (claim.text, v.evidence())


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_zero_predictor_is_flagged_in_every_cell(name):
    exp = experiment.load(name)
    results, _, unusable = report.judge_all(exp, oracle_finals(name, "zero"))
    assert set(unusable) == set(exp.cells())
    assert all("trivial predictor" in why for why in unusable.values())
    assert all(v.verdict not in verdicts.DECISIVE for v in results)


def _old_judge(exp, finals: pd.DataFrame) -> list[str]:
    """The judge before this change: every claim on eval/nmse, no learning check."""
    out = []
    for claim in exp.claims:
        table = verdicts.cell_table(exp.cells(), finals, "eval/nmse")
        out.append(verdicts.judge(dataclasses.replace(claim, metrics=("eval/nmse",)),
                                  {"eval/nmse": table}, {"eval/nmse": "min"}, {}).verdict)
    return out


def test_the_oracles_fool_a_judge_on_plain_nmse():
    """What the tests above guard against: on plain nmse the optimum 'shows' that patching
    matters more at high lambda and at small dim_y, and the zero predictor that higher lambda
    is harder."""
    exp3, exp4, exp1 = (experiment.load(n) for n in ("exp3", "exp4", "exp1"))
    assert _old_judge(exp3, oracle_finals("exp3", "info"))[0] == "supported"
    assert set(_old_judge(exp4, oracle_finals("exp4", "info"))) & set(verdicts.DECISIVE)
    assert _old_judge(exp1, oracle_finals("exp1", "zero"))[0] == "supported"


def _claims() -> list[experiment.Claim]:
    C = experiment.Claim  # noqa: N806
    return [C("trend", "t", "a", direction="increasing", metrics=("m",)),
            C("compare", "c", "b", better="x", metrics=("m",)),
            C("effect_trend", "et", "a", direction="increasing", effect_axis="p",
              metrics=("m",)),
            C("effect_compare", "ec", "b", better="x", effect_axis="p", metrics=("m",))]


CELLS = {f"a={a},b={b},p={p}": {"a": a, "b": b, "p": p}
         for a in (1, 2, 3) for b in ("x", "y") for p in (1, 8)}


def _grid(rng: np.random.Generator, effect=lambda o: 0.0, seeds: int = 3) -> pd.DataFrame:
    rows = [{"cell": c, **o, "seed": s, "diverged": False, "m": 1.0 + effect(o) +
             0.05 * rng.standard_normal()} for c, o in CELLS.items() for s in range(seeds)]
    return pd.DataFrame(rows)


def _judge(claim, finals: pd.DataFrame, mode: str = "min", table=None
           ) -> verdicts.ClaimVerdict:
    table = verdicts.cell_table(CELLS, finals, "m") if table is None else table
    return verdicts.judge(claim, {"m": table}, {"m": mode}, verdicts.usability(table, None, None))


def test_pure_noise_grids_are_rarely_decisive():
    """1,000 grids with no effect at all, 3 seeds a cell: each kind of claim is decisive
    ("supported" or "contradicted") in at most 5% of them."""
    rng = np.random.default_rng(0)
    decisive = np.zeros(len(_claims()))
    n = 1000
    for _ in range(n):
        table = verdicts.cell_table(CELLS, _grid(rng), "m")
        for i, claim in enumerate(_claims()):
            decisive[i] += _judge(claim, None, table=table).verdict in verdicts.DECISIVE
    rates = decisive / n
    print("false verdict rate per claim kind:", dict(zip([c.kind for c in _claims()], rates,
                                                          strict=True)))
    assert (rates <= 0.05).all(), rates


def test_real_effects_are_found_in_their_direction():
    rng = np.random.default_rng(1)
    trend, compare, effect_trend, effect_compare = _claims()
    grows = _grid(rng, lambda o: 0.3 * o["a"])
    assert _judge(trend, grows).verdict == "supported"
    assert _judge(trend, grows, mode="max").verdict == "contradicted"  # badness = -m
    y_worse = _grid(rng, lambda o: 0.3 * (o["b"] == "y"))
    assert _judge(compare, y_worse).verdict == "supported"
    assert _judge(compare, _grid(rng, lambda o: 0.3 * (o["b"] == "x"))).verdict == "contradicted"
    patch_cost = _grid(rng, lambda o: 0.2 * o["a"] * (o["p"] == 8))
    assert _judge(effect_trend, patch_cost).verdict == "supported"
    assert _judge(effect_compare, _grid(rng, lambda o: 0.4 * (o["b"] == "y") * (o["p"] == 8))
                  ).verdict == "supported"


def test_one_seed_is_never_decisive():
    """However large the effect, cells with one finished seed have no standard error: their
    values are left out and the claim is inconclusive."""
    rng = np.random.default_rng(2)
    finals = _grid(rng, lambda o: 10.0 * o["a"], seeds=1)
    for claim in _claims():
        v = _judge(claim, finals)
        assert v.verdict == "inconclusive" and v.dropped, claim.kind
    # one cell down to one seed: its value of the axis is left out, named in the evidence
    finals = _grid(rng, lambda o: 0.3 * o["a"])
    finals = finals[~((finals.cell == "a=2,b=x,p=1") & (finals.seed > 0))]
    v = _judge(_claims()[0], finals)
    assert 2 in v.dropped and "one finished seed" in v.evidence()


def test_learning_check_uses_the_lower_confidence_bound():
    table = pd.DataFrame([
        {"cell": "good", "mean": 0.5, "sd": 0.01, "n": 3, "se": 0.01 / 3**0.5, "df": 2,
         "n_runs": 3},
        {"cell": "noisy", "mean": 0.5, "sd": 0.5, "n": 3, "se": 0.5 / 3**0.5, "df": 2,
         "n_runs": 3},
        {"cell": "zero", "mean": 0.0, "sd": 0.0, "n": 3, "se": 0.0, "df": 2, "n_runs": 3}])
    why = verdicts.usability(table, table, 0.05)
    assert set(why) == {"noisy", "zero"}


def test_a_cell_whose_seeds_all_diverged_is_reported_and_the_report_written(tmp_path):
    exp = experiment.load(str(FIXTURES / "tiny.yaml"))
    cells = list(exp.cells())
    rows = [{"cell": cells[0], "seed": s, "lr": 1e-3, **exp.cells()[cells[0]], "step": 60,
             "diverged": False, "eval/nmse": 1.1 + 0.01 * s, "eval/nmse_info": 1.05 + 0.01 * s,
             "eval/skill_info": 0.6 + 0.01 * s, "eval/skill": 0.5, "eval/info_cost": 1.0,
             "eval/score_t+1": 1.2, "eval/score_se_t+1": 0.01} for s in exp.seeds]
    rows += [{"cell": cells[1], "seed": s, "lr": 1e-3, **exp.cells()[cells[1]], "step": 40,
              "diverged": True} for s in exp.seeds]
    search = pd.DataFrame([{"cell": c, "number": 0, "state": "COMPLETE", "diverged": False}
                           for c in cells])
    best = {c: {"lr": 1e-3, "value": 1.1} for c in cells}
    summary = report.write(exp, tmp_path, best, rows, search)
    text = summary.read_text()
    assert "every seed diverged" in text
    lines = report.verdict_lines(summary)
    assert lines and all("inconclusive" in line for line in lines)
    assert (tmp_path / "report" / "claim1.png").stat().st_size > 0
    json.dumps(rows)  # rows are what finals.json holds
