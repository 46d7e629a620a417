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
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import kalman, lds
from data.registry import metric_mode
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
        for seed in exp.finals.seeds:
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
             "eval/score_t+1": 1.2, "eval/score_se_t+1": 0.01} for s in exp.finals.seeds]
    rows += [{"cell": cells[1], "seed": s, "lr": 1e-3, **exp.cells()[cells[1]], "step": 40,
              "diverged": True} for s in exp.finals.seeds]
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


# ---- issue 26: effects from every cell, their power, the seeds a claim needs, NaN cells

POWER_GRIDS = 300  # grids per rate below: Monte-Carlo se <= sqrt(.25 / 300) = 2.9 points
NOISE_GRIDS = 1000


def _power_and_noise(names: list[str], grids: int, noise_grids: int, seed: int
                     ) -> tuple[dict, dict]:
    """bench/power_table.py's setup (the experiments' real grids, 3 seeds, sd 0.01 on
    nmse_info, skill_info from the same seeds on systems whose learnable gain varies): per
    shipped claim judged as shipped (both metrics), the rate of "supported" at 2 sd per grid
    step and of either decisive verdict on pure noise."""
    from bench.power_table import simulate

    supported, decisive = {}, {}
    rng = np.random.default_rng(seed)
    for name in names:
        exp = experiment.load(name)

        def tables_of(finals: pd.DataFrame, metrics, exp=exp) -> dict[str, pd.DataFrame]:
            return {m: verdicts.cell_table(exp.cells(), finals, m) for m in metrics}

        def judged(claim, finals: pd.DataFrame, tables=None) -> verdicts.ClaimVerdict:
            tables = tables or tables_of(finals, claim.metrics)
            tables = {m: tables[m] for m in claim.metrics}
            return verdicts.judge(claim, tables, {m: metric_mode("lds", m) for m in tables}, {})

        for i, claim in enumerate(exp.claims):
            assert claim.metrics == ("eval/nmse_info", "eval/skill_info")  # as shipped
            supported[name, i] = np.mean([judged(claim, simulate(exp, claim, 2, rng)).verdict
                                          == "supported" for _ in range(grids)])
        hits = np.zeros(len(exp.claims))
        for _ in range(noise_grids):  # one pure-noise grid serves every claim
            finals = simulate(exp, exp.claims[0], 0, rng)
            tables = tables_of(finals, {m for c in exp.claims for m in c.metrics})
            hits += [judged(c, finals, tables).verdict in verdicts.DECISIVE for c in exp.claims]
        decisive.update({(name, i): h / noise_grids for i, h in enumerate(hits)})
    return supported, decisive


def _check_power(supported: dict, decisive: dict, grids: int, noise_grids: int) -> None:
    """>= 60% power at 2 sd with two Monte-Carlo standard errors to spare (60% is not reached
    by the seed's luck); noise rates <= 5% up to two Monte-Carlo standard errors (they sit
    near 4%, so a bound at 5% exactly would turn on the last grid's luck)."""
    print("supported at 2 sd:", supported, "\ndecisive on noise:", decisive)
    for key, rate in supported.items():
        assert rate - 2 * np.sqrt(rate * (1 - rate) / grids) >= 0.60, (key, rate)
    for key, rate in decisive.items():
        assert rate <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / noise_grids), (key, rate)


def test_exp3_effect_claims_have_the_power_the_issue_asks_for():
    """exp3's effect claims, the weakest of exp1-exp4 (bench/README.md, "Verdict power"),
    judged as shipped on nmse_info and skill_info: supported in >= 60% of the grids at 2 sd
    per grid step (measured 78-79% over 300 grids; the rule before issue 33, every metric must
    count, had 31-35% on this setup) and decisive on <= 5% of pure-noise grids."""
    _check_power(*_power_and_noise(["exp3"], POWER_GRIDS, NOISE_GRIDS, 26), POWER_GRIDS,
                 NOISE_GRIDS)


@pytest.mark.extended
def test_every_shipped_claim_has_the_power_the_issue_asks_for():
    """The same for every shipped claim of exp1-exp4 (exp3's alone run by default)."""
    _check_power(*_power_and_noise(["exp1", "exp2", "exp4"], POWER_GRIDS, NOISE_GRIDS, 33),
                 POWER_GRIDS, NOISE_GRIDS)


# ---- issue 33: the first metric decides, the others must not contradict it

TWO = ("m", "s")  # m: lower is better (decides); s: higher is better (the check)


def _two_metric_grid(rng: np.random.Generator, effect_m, effect_s, sd_s: float = 0.05
                     ) -> pd.DataFrame:
    """Rows with metric m = 1 + effect_m + noise and s = effect_s + noise (s's badness is
    -s, so a claim that m's badness rises needs s to fall)."""
    return pd.DataFrame([{"cell": c, **o, "seed": k, "diverged": False,
                          "m": 1.0 + effect_m(o) + 0.05 * rng.standard_normal(),
                          "s": effect_s(o) + sd_s * rng.standard_normal()}
                         for c, o in CELLS.items() for k in range(3)])


def _judge_two(claim, finals: pd.DataFrame) -> verdicts.ClaimVerdict:
    claim = dataclasses.replace(claim, metrics=TWO)
    tables = {m: verdicts.cell_table(CELLS, finals, m) for m in TWO}
    return verdicts.judge(claim, tables, {"m": "min", "s": "max"}, {})


def test_the_first_metric_decides_when_the_other_is_only_noisier():
    """m shows the trend clearly; s carries the same trend under ten times the noise, so its
    own test does not count: the claim is supported (the rule before issue 33 called it
    inconclusive: every metric had to count) and the evidence says which metric decided."""
    trend = _claims()[0]
    rng = np.random.default_rng(33)
    finals = _two_metric_grid(rng, lambda o: 0.3 * o["a"], lambda o: -0.3 * o["a"], sd_s=3.0)
    v = _judge_two(trend, finals)
    m, s = v.per_metric
    assert m.verdict == "supported" and s.verdict == "inconclusive"
    assert v.verdict == "supported" and v.against == ()
    assert "`m` (lower is better, decides): supported" in v.evidence()


def test_a_contradicting_metric_makes_the_claim_inconclusive():
    """m supports the claim; s shows the opposite beyond its 95% threshold: no verdict while a
    metric contradicts it: for a trend either way round, a compare and an effect claim."""
    trend, compare = _claims()[:2]
    rng = np.random.default_rng(34)
    finals = _two_metric_grid(rng, lambda o: 0.3 * o["a"], lambda o: 0.3 * o["a"])
    v = _judge_two(trend, finals)
    assert v.per_metric[0].verdict == "supported"
    assert v.per_metric[1].verdict == "contradicted"
    assert v.verdict == "inconclusive" and v.against == ("s",)
    assert "supported on `m`, but `s` contradicts it" in v.evidence()
    # the same the other way round: m contradicts the claim, s supports it
    v = _judge_two(trend, _two_metric_grid(rng, lambda o: -0.3 * o["a"],
                                           lambda o: -0.3 * o["a"]))
    assert [m.verdict for m in v.per_metric] == ["contradicted", "supported"]
    assert v.verdict == "inconclusive" and v.against == ("s",)
    # compare on b (better "x"): m says x is easier; s says y has the higher score (easier)
    finals = _two_metric_grid(rng, lambda o: 0.3 * (o["b"] == "y"),
                              lambda o: 0.3 * (o["b"] == "y"))
    v = _judge_two(compare, finals)
    assert v.per_metric[0].verdict == "supported" and v.verdict == "inconclusive"
    assert v.against == ("s",)
    # an effect claim: s's effect of p shrinks with a where m's grows
    finals = _two_metric_grid(rng, lambda o: 0.2 * o["a"] * (o["p"] == 8),
                              lambda o: 0.2 * o["a"] * (o["p"] == 8))
    v = _judge_two(_claims()[2], finals)
    assert v.per_metric[0].verdict == "supported" and v.verdict == "inconclusive"


def test_contradiction_is_a_test_beyond_the_threshold_against_the_verdict():
    """verdicts.contradicts on contrasts whose answer is known: a test counts against a
    "supported" verdict when its estimate beyond 1.96 se (infinite df) has the sign opposite
    to the claim's direction; a test within the threshold never contradicts."""
    def metric(estimate: float, direction: int = 1) -> verdicts.MetricVerdict:
        c = verdicts.Contrast("t", {}, estimate, 1.0, math.inf, {}, {})
        return verdicts.MetricVerdict("s", "min", "x", "", (c,), direction)

    assert verdicts.contradicts(metric(-2.0), "supported")
    assert not verdicts.contradicts(metric(-1.9), "supported")
    assert not verdicts.contradicts(metric(2.0), "supported")
    assert verdicts.contradicts(metric(2.0), "contradicted")
    assert verdicts.contradicts(metric(2.0, direction=-1), "supported")


def test_power_formula_matches_a_monte_carlo_of_the_judge():
    """The seeds-needed formula (report.power: noncentral t with Welch-Satterthwaite df)
    against a simulation of the judge's test: exp3's slope-change contrast, cells with unequal
    seed sd (0.005-0.02), n seeds each. Simulated in numpy (20,000 draws: MC se <= 0.35
    points), the same t test as verdicts.contrast/counts, checked to agree with them on
    a few draws. The formula uses the true sd and Welch df where the judge uses estimates
    (the usual small-sample approximation): at 3 seeds a cell it is optimistic by up to 5
    points, from 5 seeds within 1.5 (the tolerances below, 8 and 3 MC standard errors)."""
    from scipy import stats

    from tuner.service.report import power

    exp = experiment.load("exp3")
    claim = exp.claims[0]
    rng = np.random.default_rng(3)
    cells = list(exp.cells())
    sd = dict(zip(cells, rng.uniform(0.005, 0.02, len(cells)), strict=True))
    table = verdicts.cell_table(exp.cells(), pd.DataFrame(
        [{"cell": c, "seed": s, "m": 1.0 + sd[c] * z} for c in cells
         for s, z in enumerate((-1.0, 0.0, 1.0))]), "m")  # sample sd of (-1, 0, 1) * sd = sd
    coefs = verdicts.effect_coefs(table, claim.effect_axis, claim.axis)
    lo, hi = coefs
    change = verdicts.contrast(table, verdicts.coef_difference(coefs[hi], coefs[lo]))
    assert change.sd == pytest.approx(sd, rel=1e-9)
    c = np.array([change.coef[cell] for cell in cells])
    s = np.array([sd[cell] for cell in cells])
    for n, effect in ((3, 0.02), (3, 0.03), (5, 0.015), (8, 0.01), (12, 0.008)):
        draws = rng.standard_normal((20_000, len(cells), n)) * s[:, None]
        means, var = draws.mean(axis=2), draws.var(axis=2, ddof=1) / n
        est = effect + means @ c
        v = c**2 * var
        se, df = np.sqrt(v.sum(axis=1)), v.sum(axis=1) ** 2 / (v**2 / (n - 1)).sum(axis=1)
        hits = est > stats.t.ppf(0.975, df) * se
        shift = effect * c / (c @ c)  # cell means whose contrast is `effect`
        for i in range(3):  # the same test as the judge's on these draws
            t = table.assign(mean=shift + means[i], se=np.sqrt(var[i]), df=n - 1)
            assert verdicts.contrast(t, change.coef).counts() == hits[i]
        predicted = power.power(change, effect, n)
        print(f"n={n} effect={effect}: simulated {hits.mean():.3f}, formula {predicted:.3f}")
        # at 3 seeds the judge's df estimate (2 per cell) scatters below the true one and the
        # formula is optimistic by 2-4 points (measured: 0.624 vs 0.584); from 5 on within 1
        assert -0.01 < predicted - hits.mean() < (0.05 if n < 5 else 0.015)
    needed = power.seeds_needed([change], [0.01])
    assert needed > 5  # where the formula is close, as above
    assert power.power(change, 0.01, needed) >= 0.8 > power.power(change, 0.01, needed - 1)
    assert power.seeds_needed([change], [1e-9]) is None  # lost in the spread: no plan


def test_cells_without_finite_values_are_flagged_and_left_out():
    """Finished, non-diverged seeds whose metric is NaN: the cell is flagged with the metric
    named and left out of every claim, whether the claim reads that metric, another one or
    both (before, the learning check skipped such a cell and its value dropped silently out
    of one metric's series)."""
    exp = experiment.load(str(FIXTURES / "tiny.yaml"))
    exp = dataclasses.replace(exp, grid={"model.patch_size": [1, 2, 4]}, claims=tuple(
        experiment.Claim("trend", f"t{i}", "model.patch_size", direction="increasing",
                         metrics=m)
        for i, m in enumerate([("eval/nmse_info",), ("eval/skill",),
                               ("eval/nmse_info", "eval/skill")])))
    rows = [{"cell": cell, "seed": s, **over, "step": 60, "diverged": False,
             "eval/nmse_info": 1.0 + 0.5 * over["model.patch_size"] + 0.01 * s,
             "eval/skill": 0.9 - 0.1 * over["model.patch_size"] + 0.01 * s,
             "eval/skill_info": 0.8 + 0.01 * s} for cell, over in exp.cells().items()
            for s in (0, 1, 2)]
    for r in rows:
        if r["model.patch_size"] == 2:
            r["eval/nmse_info"] = float("nan")
    results, _, unusable = report.judge_all(exp, pd.DataFrame(rows))
    assert set(unusable) == {"patch=2"}
    assert unusable["patch=2"] == "3 of 3 finished seeds without a finite eval/nmse_info"
    for v in results:
        assert list(v.dropped) == [2] and "finite eval/nmse_info" in v.evidence()
        assert v.verdict == "supported"  # from the two values left, 1 and 4
    # the learning check's metric NaN: flagged as well (it was skipped before)
    for r in rows:
        r["eval/nmse_info"] = 1.0
        r["eval/skill_info"] = float("nan") if r["model.patch_size"] == 4 else 0.8
    _, _, unusable = report.judge_all(exp, pd.DataFrame(rows))
    assert unusable == {"patch=4": "3 of 3 finished seeds without a finite eval/skill_info"}


def test_every_value_of_the_effect_axis_counts():
    """The effect is the slope through all values of the effect axis: a middle value moves
    it (the two-ends effect would not), with the least-squares coefficients on log2 patch."""
    cells = {f"a={a},p={p}": {"a": a, "p": p} for a in (1, 2) for p in (1, 2, 4, 8)}
    table = pd.DataFrame([{"cell": c, **o, "mean": 0.0, "sd": 0.1, "n": 3, "se": 0.1,
                           "df": 2} for c, o in cells.items()])
    coefs = verdicts.effect_coefs(table, "p", "a")
    x = np.log2([1, 2, 4, 8])
    expected = (x - x.mean()) * 3 / ((x - x.mean()) ** 2).sum()  # slope x span (3 steps)
    assert [coefs[1][f"a=1,p={p}"] for p in (1, 2, 4, 8)] == pytest.approx(expected)
    linear = table.assign(mean=np.log2(table["p"]) * 0.2 * table["a"])
    c = verdicts.contrast(linear, coefs[2])
    assert c.estimate == pytest.approx(0.2 * 2 * 3)  # a straight line: its end-to-end change
    assert c.se == pytest.approx(0.1 * np.sqrt((expected**2).sum()))


def test_an_inconclusive_claim_says_how_many_seeds_would_settle_it(tmp_path):
    """The report's "Seeds needed" for an inconclusive claim: the seeds for 80% power at the
    observed effect and at the claim's min_effect (the numbers report.power gives for the
    judge's own contrast) and their cost from the finals trials' times (written here as Tune
    writes result.json: 30 s and 50 s for the two seeds of each cell's trial)."""
    from tuner.service.report import power

    exp = experiment.load(str(FIXTURES / "tiny.yaml"))
    claim = dataclasses.replace(exp.claims[0], min_effect=(("", 0.05),))
    exp = dataclasses.replace(exp, claims=(claim,))
    cells = exp.cells()
    rows = [{"cell": cell, "seed": s, "lr": 1e-3, **over, "step": 60, "diverged": False,
             "eval/nmse": 1.1 + 0.01 * over["model.patch_size"] + 0.03 * (s - 0.5),
             "eval/skill_info": 0.6, "eval/nmse_info": 1.0, "eval/skill": 0.5,
             "eval/info_cost": 1.0} for cell, over in cells.items() for s in exp.finals.seeds]
    for i, cell in enumerate(cells):
        trial = tmp_path / "finals" / f"trial_{i}"
        trial.mkdir(parents=True)
        trial.joinpath("result.json").write_text("\n".join(json.dumps(
            {"time_total_s": t,
             "config": {"final": {"cell": cell, "lr": 1e-3, "seeds": [0, 1]}}})
            for t in (10.0, 30.0 if i == 0 else 50.0)) + "\n")
    search = pd.DataFrame([{"cell": c, "number": 0, "state": "COMPLETE", "diverged": False}
                           for c in cells])
    summary = report.write(exp, tmp_path, {c: {"lr": 1e-3, "value": 1.1} for c in cells}, rows,
                           search)
    text = summary.read_text()
    [v], _, _ = report.judge_all(exp, pd.DataFrame(rows))
    assert v.verdict == "inconclusive"
    [test] = v.per_metric[0].tests
    n_obs = power.seeds_needed([test], [test.estimate])
    n_min = power.seeds_needed([test], [0.05])
    assert 2 < n_min < n_obs < power.MAX_SEEDS  # the observed effect (0.03) is below 0.05
    section = text.split("## Seeds needed", 1)[1]
    print(section)
    assert f"**{n_obs} seeds** for 80% power" in section
    assert f"for min_effect 0.05: **{n_min} seeds**" in section
    hours = (n_obs - 2) * (30 + 50) / 2 / 3600  # per seed: 15 s and 25 s; 2 seeds run already
    assert f"**{n_obs} seeds** = {n_obs - 2} more for each of the 2 cells: 0 GPU-hours" in section
    assert f"{hours:.3g} h of trial time" in section
    assert "extend `finals.seeds`" in section
    # bullets: the verdict lines (what the CLI prints, what the viewer shows) stay the verdicts
    assert [line[:3] for line in report.verdict_lines(summary)] == ["1. "]

    # a cell that fails the learning check for want of seeds (skill_info 0.15 and 0.45): the
    # plan names the seeds at which its one-sided test passes with 80% power, here computed
    # as the textbook one-sample t power (noncentral t), and the claim's plan covers them
    from scipy import stats

    for r in rows:
        if r["cell"] == "patch=4":
            r["eval/skill_info"] = 0.15 + 0.3 * r["seed"]
    text = report.write(exp, tmp_path, {c: {"lr": 1e-3, "value": 1.1} for c in cells}, rows,
                        search).read_text()
    assert "patch=4: not clearly better than the trivial predictor" in text
    sd = np.std([0.15, 0.45], ddof=1)
    n_learn = next(n for n in range(2, 100) if stats.nct.sf(
        stats.t.ppf(0.95, n - 1), n - 1, (0.3 - 0.05) / (sd / np.sqrt(n))) >= 0.8)
    section = text.split("## Seeds needed", 1)[1]
    print(section)
    assert f"would pass it (80% power, its one-sided test) at: patch=4: **{n_learn} seeds**" \
        in section


def test_an_unusable_cell_costs_an_effect_claim_the_fewest_cells():
    """One unusable cell at the largest patch: an effect claim leaves out that patch size at
    every value of its axis (the slopes still compare like with like; 6 of 8 cells kept)
    rather than the whole axis value (4 of 8: fewer than 2 values left); a trend claim on
    the axis leaves out the axis value, as before."""
    cells = {f"a={a},p={p}": {"a": a, "p": p} for a in (1, 2) for p in (1, 2, 4, 8)}
    rng = np.random.default_rng(5)
    finals = pd.DataFrame([{"cell": c, **o, "seed": s, "diverged": False,
                            "m": 0.1 * o["a"] * np.log2(o["p"]) + 0.01 * rng.standard_normal()}
                           for c, o in cells.items() for s in range(3)])
    table = verdicts.cell_table(cells, finals, "m")
    unusable = {"a=2,p=8": "not clearly better than the trivial predictor"}
    C = experiment.Claim  # noqa: N806
    effect = verdicts.judge(C("effect_trend", "e", "a", direction="increasing", effect_axis="p",
                              metrics=("m",)), {"m": table}, {"m": "min"}, unusable)
    assert effect.dropped == {} and list(effect.dropped_effect) == [8]
    assert "left out: p=8 (a=2,p=8: not clearly better" in effect.evidence()
    assert effect.verdict == "supported" and "slope over 3 values" in effect.evidence()
    assert all("a=2,p=8" not in t.coef and "a=1,p=8" not in t.coef
               for t in effect.per_metric[0].tests)
    trend = verdicts.judge(C("trend", "t", "a", direction="increasing", metrics=("m",)),
                           {"m": table}, {"m": "min"}, unusable)
    assert list(trend.dropped) == [2] and trend.verdict == "inconclusive"


def test_seeds_needed_plans_on_the_deciding_metric(tmp_path):
    """A claim on [nmse_info, skill_info] whose skill_info is ten times noisier: the seeds
    needed are those of nmse_info's test (report.power on the first metric's contrast), not
    the larger number the noisy check metric would need (the plan before issue 33 took the
    largest over the metrics), and the check metric is listed as a check."""
    from tuner.service.report import power

    exp = experiment.load(str(FIXTURES / "tiny.yaml"))
    claim = dataclasses.replace(exp.claims[0], metrics=("eval/nmse_info", "eval/skill_info"))
    exp = dataclasses.replace(exp, claims=(claim,))
    cells = exp.cells()
    rows = [{"cell": cell, "seed": s, "lr": 1e-3, **over, "step": 60, "diverged": False,
             "eval/nmse": 1.1, "eval/nmse_info": 1.05 + 0.002 * over["model.patch_size"]
             + 0.01 * (s - 0.5), "eval/skill_info": 0.6 + 0.1 * (s - 0.5) * (-1) ** i,
             "eval/skill": 0.5, "eval/info_cost": 1.0}
            for i, (cell, over) in enumerate(cells.items()) for s in exp.finals.seeds]
    search = pd.DataFrame([{"cell": c, "number": 0, "state": "COMPLETE", "diverged": False}
                           for c in cells])
    summary = report.write(exp, tmp_path, {c: {"lr": 1e-3, "value": 1.1} for c in cells}, rows,
                           search)
    [v], _, _ = report.judge_all(exp, pd.DataFrame(rows))
    assert v.verdict == "inconclusive" and v.against == ()
    first, check = v.per_metric
    n_first = power.seeds_needed(first.tests, [t.estimate for t in first.tests])
    n_check = power.seeds_needed(check.tests, [t.estimate for t in check.tests])
    assert n_first is not None and (n_check is None or n_check > n_first)
    section = summary.read_text().split("## Seeds needed", 1)[1]
    print(section)
    assert f"for the observed effect: **{n_first} seeds** =" in section
    assert "`eval/skill_info` (a check: must not contradict `eval/nmse_info`)" in section
