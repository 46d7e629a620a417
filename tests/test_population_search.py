"""The population search's parts without a cluster: the halving rule (on whole rungs, no
member exempt) and the searcher's waves (strata, neighbours, TPE; a wave waits for the one
before it; members asked before a kill are handed out again together)."""

import math

import pytest
from optuna.trial import TrialState

from tuner.core.loop import Progress
from tuner.service.search.halving import SuccessiveHalving, keep_count, member_steps, rungs
from tuner.service.search.population import PopulationSearcher, neighbours, wave_sizes
from tuner.service.trial_spec import Worker, member_key


def test_rungs_and_counts():
    assert rungs(20, 3, 60) == [20]
    assert rungs(3000, 3, 30000) == [3000, 9000, 27000]
    assert [keep_count(n, 3) for n in (1, 2, 3, 4, 8, 9)] == [1, 1, 1, 2, 3, 3]
    # 8 members: 8 x 3000, then 3 to 9000, then 1 to 27000 and 30000
    assert member_steps(8, 3000, 3, 30000) == 8 * 3000 + 3 * 6000 + 1 * 18000 + 1 * 3000
    assert wave_sizes(10, 4) == [4, 4, 2] and wave_sizes(8, 8) == [8]


def _progress(values, metric="eval/nmse"):
    p = Progress.start(len(values))
    p.last = [{metric: v, "step": 20} for v in values]
    p.alive = list(range(len(values)))
    return p


def test_halving_keeps_the_best_third_per_cell_and_spares_no_one():
    rule = SuccessiveHalving(("a",) * 4 + ("b",) * 3, "eval/nmse", "min", 20, 3, 60)
    # member 0 (the first asked) is the worst of cell a: it is stopped like any other
    progress = _progress([9.0, 1.0, 2.0, 3.0, 5.0, 4.0, math.nan])
    assert rule(20, 0, progress) == {0, 3, 4, 6}  # a keeps 2 of 4, b keeps 1 of 3 (NaN last)
    assert rule(40, 20, progress) == set()  # no rung in (20, 40]
    assert SuccessiveHalving(("a",) * 2, "eval/skill", "max", 20, 3, 60)(
        20, 0, _progress([0.5, 0.7], "eval/skill")) == {0}  # higher is better for skill
    # a tie goes to the member listed first
    assert rule(20, 0, _progress([1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0])) == {2, 3, 5, 6}


def test_neighbours_on_a_grid():
    coords = {"a": (0, 0), "b": (1, 0), "c": (0, 1), "d": (1, 1), "e": (2, 0)}
    assert neighbours(coords) == {"a": ["b", "c"], "b": ["a", "e", "d"], "c": ["d", "a"],
                                  "d": ["c", "b"], "e": ["b"]}


def _searcher(tmp_path, **kw):
    cells = {"x=0": {"x": 0}, "x=1": {"x": 1}}
    args = dict(coords={"x=0": (0,), "x=1": (1,)}, groups=[["x=0"], ["x=1"]],
                trials_per_cell=6, population=3, lr_low=1e-4, lr_high=1e-1,
                metric="eval/nmse", mode="min", max_t=60, grace_period=20,
                reduction_factor=3, study_dir=tmp_path, worker=Worker()) | kw
    return PopulationSearcher(cells, **args)


def _finish(s, tid, config, values):
    """Reports step 20 for every member, stops all but the first, completes it at 60."""
    n = len(config["members"])
    s.on_trial_result(tid, {"step": 20, **{member_key(j, "step"): 20 for j in range(n)},
                            **{member_key(j, "eval/nmse"): values[j] for j in range(n)},
                            **{member_key(j, "stopped"): j > 0 for j in range(n)}})
    s.on_trial_complete(tid, {"step": 60, member_key(0, "step"): 60,
                              member_key(0, "eval/nmse"): values[0] / 2})


def test_waves_strata_neighbours_and_tpe(tmp_path):
    s = _searcher(tmp_path)
    c0, c1 = s.suggest("t0"), s.suggest("t1")
    assert [m["cell"] for m in c0["members"]] == ["x=0"] * 3 and c0["wave"] == 0
    assert s.suggest("t2") is None  # wave 1 waits for all of wave 0
    lo, hi = math.log(1e-4), math.log(1e-1)
    for c in (c0, c1):  # one rate in each third of the log range
        pos = [(math.log(m["lr"]) - lo) / (hi - lo) for m in c["members"]]
        assert [int(p * 3) for p in pos] == [0, 1, 2]
    _finish(s, "t0", c0, [3.0, 2.0, 1.0])
    assert s.suggest("t2") is None  # x=1's wave 0 still open
    _finish(s, "t1", c1, [5.0, 2.0, 1.0])
    c2 = s.suggest("t2")
    assert c2["wave"] == 1 and c2["members"][0]["cell"] == "x=0"
    # its first member is the neighbour's best (x=1's member 0, the only COMPLETE one)
    assert c2["members"][0]["lr"] == pytest.approx(c1["members"][0]["lr"])
    study = s._studies["x=0"].study
    sources = [t.user_attrs["source"] for t in study.trials]
    assert sources == ["stratified"] * 3 + ["neighbour:x=1", "tpe", "tpe"]
    states = [t.state for t in study.trials[:3]]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]


def test_members_asked_before_a_kill_are_handed_out_together(tmp_path):
    s = _searcher(tmp_path)
    snapshot = s.get_state()  # Tune's last snapshot: nothing assigned yet
    first = s.suggest("t0")  # asked and written to the journal, then the driver dies
    again = _searcher(tmp_path)  # the restarted driver re-opens the journals
    again.set_state(snapshot)
    config = again.suggest("t9")
    assert config["members"] == first["members"]  # the same population, no new asks
    assert len(again._studies["x=0"].trials()) == 3


def test_cells_that_share_a_program_share_a_trial(tmp_path):
    s = _searcher(tmp_path, groups=[["x=0", "x=1"]])
    config = s.suggest("t0")
    assert [m["cell"] for m in config["members"]] == ["x=0"] * 3 + ["x=1"] * 3
    assert set(config["cells"]) == {"x=0", "x=1"}
    assert config["halving"]["cells"] == ["x=0"] * 3 + ["x=1"] * 3  # halved per cell
    assert s.suggest("t1") is None  # the wave's one trial is out
    n = len(config["members"])
    s.on_trial_complete("t0", {"step": 60, **{member_key(j, "step"): 60 for j in range(n)},
                               **{member_key(j, "eval/nmse"): 1.0 + j for j in range(n)}})
    for study in s._studies.values():
        assert [t.state for t in study.study.trials] == [TrialState.COMPLETE] * 3
    assert s.suggest("t1")["wave"] == 1
