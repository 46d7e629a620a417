"""The population search's parts without a cluster: the halving rule (on whole rungs, no
member exempt) and the searcher's waves (strata, neighbours, TPE; a wave waits for the one
before it; members asked before a kill are handed out again together)."""

import math
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from tuner.core.loop import Progress
from tuner.service.search.halving import SuccessiveHalving, keep_count, member_steps, rungs
from tuner.service.search.population import PopulationSearcher, neighbours, wave_sizes
from tuner.service.search.scheduler import StopTold
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
    # no rung in (20, 40]: only the member whose evaluation is NaN stops (diverged, at once)
    assert rule(40, 20, progress) == {6}
    progress.alive.remove(6)
    assert rule(40, 20, progress) == set()
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


# ----------------------------------------------------------------- a driver in place of Tune
LINE = {"x=0": (0,), "x=1": (1,), "x=2": (2,)}


def _line(tmp_path, **kw):
    """Three cells on a line, two waves of three; x=0 and x=1 share a program."""
    cells = {c: {"x": x[0]} for c, x in LINE.items()}
    args = dict(coords=LINE, groups=[["x=0", "x=1"], ["x=2"]], trials_per_cell=6,
                population=3, lr_low=1e-4, lr_high=1e-1, metric="eval/nmse", mode="min",
                max_t=60, grace_period=20, reduction_factor=3, study_dir=tmp_path,
                worker=Worker()) | kw
    return PopulationSearcher(cells, **args)


def _value(cell, lr):
    """What a member reaches: a bowl in log lr whose bottom moves with the cell."""
    return (math.log10(lr) + 2.5 - 0.5 * LINE[cell][0]) ** 2 + 0.1


def _train(s, tid, config):
    """A population's results as its trial reports them: every member at the rung (step 20),
    all but each cell's best stopped there, the best at the full budget."""
    members = config["members"]
    values = [_value(m["cell"], m["lr"]) for m in members]
    best = {m["cell"]: min((v, j) for j, (v, mm) in enumerate(zip(values, members, strict=True))
                           if mm["cell"] == m["cell"])[1] for m in members}
    keep = set(best.values())
    s.on_trial_result(tid, {"step": 20,
                            **{member_key(j, "step"): 20 for j in range(len(members))},
                            **{member_key(j, "eval/nmse"): 2 * v for j, v in enumerate(values)},
                            **{member_key(j, "stopped"): j not in keep
                               for j in range(len(members))}})
    s.on_trial_complete(tid, {"step": 60, **{member_key(j, "step"): 60 for j in keep},
                              **{member_key(j, "eval/nmse"): values[j] for j in keep}})


def _drive(s, concurrency, ids, snapshots=None):
    """Suggests up to ``concurrency`` populations, ends the oldest, until FINISHED; fails if
    the search stalls (nothing running, nothing handed out). ``snapshots``: the searcher's
    state before each suggest (what Tune would have saved last)."""
    running = []
    while True:
        finished = False
        while len(running) < concurrency:
            if snapshots is not None:
                snapshots.append(s.get_state())
            tid = f"t{next(ids)}"
            config = s.suggest(tid)
            if config is None or config == PopulationSearcher.FINISHED:
                finished = config == PopulationSearcher.FINISHED
                break
            running.append((tid, config))
        if not running:
            assert finished, "the search stalled: nothing running and nothing handed out"
            return
        _train(s, *running.pop(0))


def _outcome(s):
    return {c: [(t.number, round(t.params["lr"], 12), t.state.name, t.user_attrs.get("wave"),
                 t.user_attrs.get("group"), t.user_attrs.get("source"),
                 bool(t.user_attrs.get("diverged")))
                for t in study.study.trials]
            for c, study in s._studies.items()}


def test_proposals_do_not_depend_on_concurrency(tmp_path):
    """Wave 1 reads only wave 0, however the populations of wave 1 are timed."""
    import itertools

    seen = {}
    for concurrency in (1, 2, 4):
        s = _line(tmp_path / str(concurrency), groups=[["x=0"], ["x=1"], ["x=2"]])
        _drive(s, concurrency, itertools.count())
        seen[concurrency] = _outcome(s)
    assert seen[1] == seen[2] == seen[4]
    sources = [t[5] for t in seen[1]["x=1"]]
    assert sources[:3] == ["stratified"] * 3 and sources[3].startswith("neighbour:")
    assert all(len(trials) == 6 for trials in seen[1].values())


class _Killed(Exception):
    pass


def _kill_at(point, k):
    """A fault hook: raises at the k-th visit of ``point`` (counting from 0)."""
    visits = {}

    def hook(at):
        visits[at] = visits.get(at, 0) + 1
        if at == point and visits[at] == k + 1:
            raise _Killed(f"{point} #{k}")

    hook.visits = visits
    return hook


def test_a_kill_inside_suggest_resumes_to_the_same_trials(tmp_path, monkeypatch):
    """Killed after the j-th ask, between the cells of a shared group, between an ask and its
    wave, between an enqueue and its ask, or before the population is handed out: a restarted
    driver (journals, the last snapshot) ends with the trials of an uninterrupted run."""
    import itertools

    from tuner.service.search import population

    counter = _kill_at("<none>", 0)
    monkeypatch.setattr(population, "FAULT", counter)
    reference = _line(tmp_path / "ref")
    _drive(reference, 1, itertools.count())
    want = _outcome(reference)
    assert set(counter.visits) == {"enqueued", "asked", "tagged", "cell", "handed"}
    for point, n in counter.visits.items():
        for k in sorted({0, 1, n // 2, n - 1}):
            folder = tmp_path / f"{point}{k}"
            monkeypatch.setattr(population, "FAULT", _kill_at(point, k))
            s, snapshots, ids = _line(folder), [], itertools.count()
            with pytest.raises(_Killed):
                _drive(s, 1, ids, snapshots)
            monkeypatch.setattr(population, "FAULT", None)
            again = _line(folder)  # the restarted driver re-opens the journals
            again.set_state(snapshots[-1])
            _drive(again, 1, ids)
            assert _outcome(again) == want, (point, k)


def test_a_nan_evaluation_of_a_finite_loss_is_diverged(tmp_path):
    """As on the one-rate path (ASHA stops it, the searcher tells it PRUNED marked diverged):
    TPE ranks a diverged rate below every rate that was merely stopped early."""
    s = _searcher(tmp_path)
    config = s.suggest("t0")
    n = len(config["members"])
    values = [1.0, math.nan, 2.0]
    s.on_trial_result("t0", {"step": 20, **{member_key(j, "step"): 20 for j in range(n)},
                             **{member_key(j, "train_loss"): 0.5 for j in range(n)},
                             **{member_key(j, "eval/nmse"): values[j] for j in range(n)},
                             **{member_key(j, "stopped"): j == 1 for j in range(n)}})
    trials = s._studies["x=0"].study.trials
    assert trials[1].state == TrialState.PRUNED and trials[1].user_attrs.get("diverged")
    assert math.isnan(trials[1].intermediate_values[20])
    assert [t.state for t in (trials[0], trials[2])] == [TrialState.RUNNING] * 2
    # the halving stops it at the first evaluation, rung or not
    rule = SuccessiveHalving(("x=0",) * 3, "eval/nmse", "min", 20, 3, 60)
    assert rule(10, 0, _progress(values)) == {1}


def test_the_report_names_the_source_of_the_best_within_its_round():
    """Trial numbers restart in each search round: trial 3 of a re-search is not trial 3 of
    the first round."""
    import pandas as pd

    from tuner.service.report.render import proposals

    rows = pd.DataFrame({"number": [0, 3, 0, 3], "round": ["search"] * 2 + ["research"] * 2,
                         "source": ["stratified", "neighbour:x=1", "stratified", "tpe"]})
    note = proposals(rows, {"trial_number": 3, "round": "research"})
    assert note.endswith("best from tpe; ")
    assert proposals(rows, {"trial_number": 3, "round": "search"}).endswith(
        "best from neighbour:x=1; ")


def test_a_population_told_after_the_snapshot_counts_as_told(tmp_path):
    """Its members are finished in the journals: restored, it is not running (so it holds no
    slot under ``max_running``), Tune's resumed trial is stopped at its first result, and its
    resumed results change nothing."""
    s = _searcher(tmp_path)
    config = s.suggest("t0")
    snapshot = s.get_state()
    _finish(s, "t0", config, [3.0, 2.0, 1.0])
    before = _outcome_of(s)
    stop = StopTold()
    again = _searcher(tmp_path, max_running=lambda: 1, scheduler=stop)
    assert again.set_state(snapshot) == {"t0"}
    # Tune resumes t0 from its checkpoint: stopped at its first result, not trained on
    assert stop.on_trial_result(None, SimpleNamespace(trial_id="t1"), {}) == TrialScheduler.CONTINUE
    assert stop.on_trial_result(None, SimpleNamespace(trial_id="t0"), {}) == TrialScheduler.STOP
    assert again.suggest("t1")["wave"] == 0  # x=1's wave 0: t0 holds no slot
    _finish(again, "t0", config, [9.0, 9.0, 9.0])
    assert _outcome_of(again)["x=0"] == before["x=0"]


def _outcome_of(s):
    return {c: [(t.number, t.state.name, t.value) for t in study.study.trials]
            for c, study in s._studies.items()}
