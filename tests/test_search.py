"""Tests of the per-cell search machinery (PerCellSearcher + PerCellScheduler).

Fast unit tests drive the Tune hooks by hand; the ``slow`` ones run a real local Ray cluster
with real Optuna journal studies on a synthetic trainable (``search_driver``).
"""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

# Under `uv run`, Ray 2.60 would rebuild the uv environment for every worker from a packaged
# working_dir (ray/_private/worker.py:1426); workers must share this interpreter. Must be set
# before ray is imported (read once in ray/_private/ray_constants.py:740).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

import pytest  # noqa: E402
import search_driver as driver  # noqa: E402
from ray.tune.experiment import Trial  # noqa: E402
from ray.tune.schedulers import TrialScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from tuner.service.search import results  # noqa: E402
from tuner.service.search.scheduler import PerCellScheduler  # noqa: E402
from tuner.service.search.searcher import PerCellSearcher  # noqa: E402

MAX_T = 9
DRIVER = Path(__file__).with_name("search_driver.py")


# --------------------------------------------------------------------------- helpers
def _searcher(tmp_path: Path, cells=None, trials_per_cell=3, scheduler=None) -> PerCellSearcher:
    cells = cells or {"a": {"opt": -3.0}, "b": {"opt": -1.0}}
    return PerCellSearcher(
        cells,
        trials_per_cell,
        1e-5,
        1.0,
        metric="loss",
        mode="min",
        time_attr="step",
        max_t=MAX_T,
        study_dir=tmp_path / "studies",
        seed=0,
        scheduler=scheduler,
    )


def _scheduler() -> PerCellScheduler:
    return PerCellScheduler("loss", "min", "step", MAX_T, grace_period=1, reduction_factor=3)


def _trial(trial_id: str, cell: str, status: str = Trial.RUNNING) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"cell": cell}, status=status)


def _state_by_number(searcher: PerCellSearcher, cell: str) -> dict[int, str]:
    df = searcher.trials_dataframe()
    return dict(zip(df[df.cell == cell].number, df[df.cell == cell].state, strict=True))


# --------------------------------------------------------------------------- searcher units
def test_suggest_balances_cells_then_finishes(tmp_path):
    searcher = _searcher(tmp_path)
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    assert [c["cell"] for c in configs] == ["a", "b", "a", "b", "a", "b"]
    assert all(1e-5 <= c["lr"] <= 1.0 for c in configs)
    assert configs[0]["opt"] == -3.0 and configs[1]["opt"] == -1.0
    assert searcher.suggest("t6") == Searcher.FINISHED
    assert {c: n["RUNNING"] for c, n in driver.state_counts(searcher).items()} == {"a": 3, "b": 3}


def test_concurrency_caps_hold_trials_back_until_one_ends(tmp_path):
    """max_concurrent auto: at most max_running() trials over all cells (read at every ask, so a
    growing cluster raises it) and per_cell_running per cell; None means "ask again later"."""
    cap = {"n": 3}
    searcher = PerCellSearcher({"a": {}, "b": {}}, 4, 1e-5, 1.0, metric="loss", mode="min",
                               time_attr="step", max_t=MAX_T, study_dir=tmp_path / "s",
                               max_running=lambda: cap["n"], per_cell_running=1)
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["cell"] for c in first[:2]] == ["a", "b"] and first[2] is None  # 1 per cell
    searcher.on_trial_complete("t0", {"step": MAX_T, "loss": 1.0})
    assert searcher.suggest("t3")["cell"] == "a"
    cap["n"] = 2  # fewer resources: both running trials hold the cap
    assert searcher.suggest("t4") is None


def test_experiment_files_may_fill_the_cluster(tmp_path):
    from tuner.service import experiment

    text = (experiment.SEARCH_SPACES / "exp4.yaml").read_text().replace(
        "  max_concurrent: 4 ", "  max_concurrent: auto ", 1)
    path = tmp_path / "auto.yaml"
    path.write_text(text)
    assert experiment.load(str(path)).search.max_concurrent is None


def test_outcomes_and_best_only_from_complete(tmp_path):
    searcher = _searcher(tmp_path, cells={"a": {}}, trials_per_cell=4)
    for i in range(4):
        searcher.suggest(f"t{i}")
    for step in (1, 2, 3):
        searcher.on_trial_result("t0", {"step": step, "loss": 0.01 * step})
    searcher.on_trial_complete("t0", {"step": 3, "loss": 0.001})  # stopped by ASHA
    searcher.on_trial_complete("t1", {"step": MAX_T, "loss": float("nan")})
    searcher.on_trial_complete("t2", None, error=True)
    searcher.on_trial_complete("t3", {"step": MAX_T, "loss": 0.5})
    searcher.on_trial_complete("t3", {"step": MAX_T, "loss": 0.1})  # duplicate: ignored

    # NaN: PRUNED with a NaN at its step (TPE's worst rank) and marked diverged; error: FAIL
    assert _state_by_number(searcher, "a") == {0: "PRUNED", 1: "PRUNED", 2: "FAIL",
                                               3: "COMPLETE"}
    df = searcher.trials_dataframe()
    assert df.diverged.tolist() == [False, True, False, False]
    nan_trial = searcher._studies["a"].frozen(1)
    assert math.isnan(nan_trial.intermediate_values[MAX_T])
    best = searcher.best_per_cell()["a"]
    assert best["trial_number"] == 3 and best["value"] == 0.5
    df = searcher.trials_dataframe()
    assert df.loc[df.number == 0, "last_step"].item() == 3


def test_tpe_ranks_a_late_divergence_below_every_pruned_trial(tmp_path):
    """TPE's own split (good vs bad trials): a trial that diverged at the last step ranks
    below trials ASHA stopped at the first rung, whatever their loss, and below complete ones."""
    from optuna.samplers._tpe.sampler import _split_trials

    searcher = _searcher(tmp_path, cells={"a": {}}, trials_per_cell=5)
    for i in range(5):
        searcher.suggest(f"t{i}")
    for i, loss in enumerate((0.9, 0.8, 0.7)):  # stopped at step 1
        searcher.on_trial_result(f"t{i}", {"step": 1, "loss": loss})
        searcher.on_trial_complete(f"t{i}", {"step": 1, "loss": loss})
    for step in range(1, MAX_T):  # fine until the end, then NaN
        searcher.on_trial_result("t3", {"step": step, "loss": 0.01})
    searcher.on_trial_complete("t3", {"step": MAX_T, "loss": float("nan")})
    searcher.on_trial_result("t4", {"step": MAX_T, "loss": 0.5})
    searcher.on_trial_complete("t4", {"step": MAX_T, "loss": 0.5})
    study = searcher._studies["a"].study
    trials = study.get_trials(deepcopy=False)
    below, above = _split_trials(study, trials, n_below=len(trials) - 1)
    assert [t.number for t in above] == [3]
    assert searcher.best_per_cell()["a"]["trial_number"] == 4


def test_tied_best_value_goes_to_the_trial_that_reached_it_first(tmp_path):
    searcher = _searcher(tmp_path, cells={"a": {}}, trials_per_cell=3)
    for i in range(3):
        searcher.suggest(f"t{i}")
    curves = {"t0": [0.5, 0.1, 0.1], "t1": [0.1, 0.1, 0.1], "t2": [0.3, 0.2, 0.2]}
    for trial_id, curve in curves.items():
        for step, loss in zip((3, 6, MAX_T), curve, strict=True):
            searcher.on_trial_result(trial_id, {"step": step, "loss": loss})
        searcher.on_trial_complete(trial_id, {"step": MAX_T, "loss": curve[-1]})
    best = searcher.best_per_cell()["a"]
    assert best["trial_number"] == 1 and best["value"] == 0.1  # t0 ties, but reached it later


def test_best_is_none_without_complete_and_edge_flags(tmp_path):
    searcher = _searcher(tmp_path, cells={"a": {}}, trials_per_cell=1)
    searcher.suggest("t0")
    assert searcher.best_per_cell() == {"a": None}
    assert results.edge(1.5e-5, 1e-5, 1.0) == "low"
    assert results.edge(0.7, 1e-5, 1.0) == "high"
    assert results.edge(1e-3, 1e-5, 1.0) is None


def test_snapshot_restore_reuses_unclaimed_trial_and_skips_told(tmp_path):
    scheduler = _scheduler()
    first = _searcher(tmp_path, trials_per_cell=2, scheduler=scheduler)
    first.suggest("t0")  # a/0
    first.suggest("t1")  # b/0
    # Tune hands every result to both (the journal is what the rungs are rebuilt from)
    scheduler.on_trial_result(None, _trial("t0", "a"), {"step": 1, "loss": 1.0})
    first.on_trial_result("t0", {"step": 1, "loss": 1.0})
    snapshot = tmp_path / "searcher-state.json"
    first.save(str(snapshot))
    # After the snapshot: a/1 asked, t1 told in the journal, then the driver dies.
    lost = first.suggest("t2")
    first.on_trial_complete("t1", {"step": MAX_T, "loss": 0.3})

    fresh_scheduler = _scheduler()
    fresh = _searcher(tmp_path, trials_per_cell=2, scheduler=fresh_scheduler)
    fresh.restore(str(snapshot))
    assert fresh_scheduler.rungs()["a"][0] == (1.0, 1)
    # Tune resumes t1 and it finishes again: the journal keeps the first tell.
    fresh.on_trial_complete("t1", {"step": MAX_T, "loss": 99.0})
    assert fresh.best_per_cell()["b"]["value"] == 0.3
    # The unclaimed a/1 goes to the next Tune trial instead of a new ask.
    again = fresh.suggest("t3")
    assert (again["cell"], again["lr"]) == ("a", lost["lr"])
    assert fresh.suggest("t4")["cell"] == "b"
    assert fresh.suggest("t5") == Searcher.FINISHED
    df = fresh.trials_dataframe()
    assert len(df) == 4 and df.tune_trial_id.is_unique


def test_set_search_properties_keeps_constructor_metric(tmp_path):
    searcher = _searcher(tmp_path)
    assert searcher.set_search_properties("other", "max", {"x": 1})
    assert (searcher.metric, searcher.mode) == ("loss", "min")


def test_mismatched_scheduler_rejected(tmp_path):
    bad = PerCellScheduler("loss", "min", "step", MAX_T + 1, 1, 3)
    with pytest.raises(ValueError, match="max_t"):
        _searcher(tmp_path, scheduler=bad)


# --------------------------------------------------------------------------- scheduler units
def test_scheduler_compares_only_within_cell():
    scheduler = _scheduler()
    for tid, cell in [("a0", "a"), ("a1", "a"), ("b0", "b"), ("b1", "b")]:
        scheduler.on_trial_add(None, _trial(tid, cell))
    # Cell a has tiny losses; cell b's are 100x larger but ordered among themselves.
    result = scheduler.on_trial_result
    assert result(None, _trial("a0", "a"), {"step": 1, "loss": 0.01}) == TrialScheduler.CONTINUE
    assert result(None, _trial("a1", "a"), {"step": 1, "loss": 0.02}) == TrialScheduler.STOP
    assert result(None, _trial("b0", "b"), {"step": 1, "loss": 2.0}) == TrialScheduler.CONTINUE
    assert result(None, _trial("b1", "b"), {"step": 1, "loss": 1.0}) == TrialScheduler.CONTINUE
    assert scheduler.rungs() == {
        "a": [(1.0, 2), (3.0, 0), (9.0, 0)],
        "b": [(1.0, 2), (3.0, 0), (9.0, 0)],
    }
    assert result(None, _trial("b1", "b"), {"step": MAX_T, "loss": 1.0}) == TrialScheduler.STOP
    assert result(None, _trial("b0", "b"), {"step": 2, "loss": math.nan}) == TrialScheduler.STOP


def test_scheduler_state_roundtrip_and_readd_does_not_double_count():
    scheduler = _scheduler()
    scheduler.on_trial_add(None, _trial("a0", "a"))
    scheduler.on_trial_result(None, _trial("a0", "a"), {"step": 1, "loss": 0.5})
    scheduler.on_trial_complete(None, _trial("a0", "a"), {"step": MAX_T, "loss": 0.1})
    state = json.loads(json.dumps(scheduler.get_state()))

    restored = _scheduler()
    restored.set_state(state)
    restored.on_trial_add(None, _trial("a0", "a", status=Trial.TERMINATED))
    restored.on_trial_result(None, _trial("a0", "a"), {"step": 1, "loss": 7.0})  # re-report
    assert restored.rungs() == scheduler.rungs() == {"a": [(1.0, 1), (3.0, 0), (9.0, 1)]}
    assert restored.get_state() == state


# --------------------------------------------------------------------------- with Ray
@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # Workers unpickle the trainable by module name: let them import search_driver.
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(DRIVER.parent), *sys.path])}}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        address="local",
        log_to_driver=False,
        runtime_env=runtime_env,
    )
    yield
    ray.shutdown()


def _fit(tmp_path: Path, cells: dict, trials_per_cell: int, name: str):
    from ray import tune

    searcher, scheduler = driver.build_search(
        cells, trials_per_cell, MAX_T, tmp_path / f"{name}-studies"
    )
    tuner = tune.Tuner(
        driver.synthetic_trainable,
        param_space={"max_t": MAX_T, "sleep": 0.0},
        tune_config=driver.tune_config(searcher, scheduler),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name=name, verbose=0),
    )
    return searcher, scheduler, tuner.fit()


@pytest.mark.slow
def test_grid_search_per_cell(ray_cluster, tmp_path):
    cells = {"a": {"opt": -3.0, "scale": 1.0}, "b": {"opt": -1.5, "scale": 100.0}}
    searcher, scheduler, results = _fit(tmp_path, cells, trials_per_cell=9, name="grid")

    assert not results.errors
    assert sorted(r.config["cell"] for r in results) == ["a"] * 9 + ["b"] * 9
    counts = driver.state_counts(searcher)
    for cell in cells:
        assert sum(counts[cell].values()) == 9
        assert counts[cell]["RUNNING"] == 0 and counts[cell]["FAIL"] == 0
        assert counts[cell]["PRUNED"] >= 1
        # b's losses are 100x a's: a global ASHA would have pruned all of b.
        assert counts[cell]["COMPLETE"] >= 2
    best = searcher.best_per_cell()
    df = searcher.trials_dataframe()
    for cell, settings in cells.items():
        row = df[(df.cell == cell) & (df.number == best[cell]["trial_number"])]
        assert row.state.item() == "COMPLETE" and row.last_step.item() == MAX_T
        assert abs(math.log10(best[cell]["lr"]) - settings["opt"]) < 1.0
    assert all(rungs[0][1] > 0 for rungs in scheduler.rungs().values())


@pytest.mark.slow
def test_nan_trials_are_marked_diverged_and_never_win(ray_cluster, tmp_path):
    cells = {"a": {"opt": -1.0, "nan_above": 1e-2}}
    searcher, _, results = _fit(tmp_path, cells, trials_per_cell=8, name="nan")

    assert len(results) == 8 and not results.errors
    df = searcher.trials_dataframe()
    diverged = df[df.lr > 1e-2]
    assert len(diverged) >= 1 and (diverged.state == "PRUNED").all() and diverged.diverged.all()
    assert not df[df.lr <= 1e-2].diverged.any() and (df.state != "FAIL").all()
    best = searcher.best_per_cell()["a"]
    assert best is None or best["lr"] <= 1e-2


# --------------------------------------------------------------------------- kill / resume
KILL_CELLS = {"a": {"opt": -3.0}, "b": {"opt": -1.5, "scale": 100.0}}
KILL_TRIALS = 5
KILL_SLEEP = 0.1  # seconds per step: leaves a window to kill the driver mid-search


def _start_driver(tmp_path: Path, name: str) -> subprocess.Popen:
    """The driver in its own session (own Ray cluster), so the whole group can be killed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [
        sys.executable, str(DRIVER), "--storage", str(tmp_path / "ray"), "--name", name,
        "--study-dir", str(tmp_path / f"{name}-studies"), "--cells", json.dumps(KILL_CELLS),
        "--trials-per-cell", str(KILL_TRIALS), "--max-t", str(MAX_T),
        "--sleep", str(KILL_SLEEP), "--summary", str(tmp_path / f"{name}.json"),
    ]  # fmt: skip
    with open(tmp_path / f"{name}.log", "a") as log:
        return subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _newest_snapshot(exp_dir: Path) -> dict | None:
    paths = sorted(glob.glob(str(exp_dir / "searcher-state-*.pkl")))
    if not paths:
        return None
    try:
        return json.loads(Path(paths[-1]).read_text())
    except (OSError, json.JSONDecodeError):
        return None  # caught mid-replace


def _kill_mid_search(proc: subprocess.Popen, exp_dir: Path, timeout: float = 150) -> None:
    """SIGKILLs the driver's process group once a snapshot holds finished and live trials."""
    deadline = time.monotonic() + timeout
    while True:
        snap = _newest_snapshot(exp_dir)
        if snap and len(snap["done"]) >= 2 and len(snap["assigned"]) > len(snap["done"]):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("driver ended (or stalled) before it could be killed mid-search")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


@pytest.mark.slow
@pytest.mark.extended  # end to end: the SIGKILL rows of test_service and test_population_service
def test_kill_and_resume(ray_cluster, tmp_path):
    reference = driver.run(
        str(tmp_path / "ray"), "full", str(tmp_path / "full-studies"), KILL_CELLS,
        KILL_TRIALS, MAX_T, 0.0,
    )  # fmt: skip
    exp_dir = tmp_path / "ray" / "cut"
    _kill_mid_search(_start_driver(tmp_path, "cut"), exp_dir)
    time.sleep(0.5)
    before = _newest_snapshot(exp_dir)  # what the restore starts from
    assert _wait(_start_driver(tmp_path, "cut"), 200) == 0, (tmp_path / "cut.log").read_text()[
        -3000:
    ]
    assert "restoring" in (tmp_path / "cut.log").read_text()
    after = json.loads((tmp_path / "cut.json").read_text())

    # Same number of Optuna trials per cell as the uninterrupted run, none left running.
    def per_cell(summary):
        return {c: sum(n.values()) for c, n in summary["counts"].items()}

    assert per_cell(after) == per_cell(reference) == dict.fromkeys(KILL_CELLS, KILL_TRIALS)
    assert all(n["RUNNING"] == 0 for n in after["counts"].values())
    # No duplicates: each Tune trial ran exactly one Optuna trial, no lr asked twice.
    optuna_ids = [t["tune_trial_id"] for t in after["trials"]]
    tune_ids = [t["trial_id"] for t in after["tune_trials"]]
    assert len(set(optuna_ids)) == len(optuna_ids) and len(set(tune_ids)) == len(tune_ids)
    assert len({(t["cell"], t["lr"]) for t in after["trials"]}) == len(after["trials"])
    assert set(tune_ids) <= set(optuna_ids)
    # Optuna trials missing from Tune's results were started and finished between Tune's
    # last snapshot and the kill: the journal kept them, Tune's restored state never had them.
    for t in after["trials"]:
        if t["tune_trial_id"] not in tune_ids:
            assert t["state"] in ("COMPLETE", "PRUNED", "FAIL")
            assert t["tune_trial_id"] not in before["assigned"]
    # Trials handed out before the snapshot finished against the same Optuna trial number.
    final_assigned = after["searcher_state"]["assigned"]
    for tid, pair in before["assigned"].items():
        assert final_assigned[tid] == pair
    # ASHA rungs after the resume still hold every pre-kill value.
    for cell, cell_state in before["scheduler"]["cells"].items():
        final_rungs = after["scheduler_state"]["cells"][cell]["rungs"]
        for (milestone, recorded), (final_milestone, final_recorded) in zip(
            cell_state["rungs"], final_rungs, strict=True
        ):
            assert milestone == final_milestone
            assert recorded.items() <= final_recorded.items()
    # ...and the scheduler Tune fed after the resume is the one the searcher saved: every
    # trial in Tune's results (pre- and post-kill) is recorded at the first rung.
    for cell in KILL_CELLS:
        first_rung = after["scheduler_state"]["cells"][cell]["rungs"][-1][1]
        assert set(first_rung) == {t["trial_id"] for t in after["tune_trials"] if t["cell"] == cell}
    assert len(after["searcher_state"]["done"]) > len(before["done"])


def test_rungs_rebuilt_from_histories_equal_the_live_rungs():
    """Replaying each trial's results (the journal) fills the rungs exactly as the live path
    did, whatever order the trials' results arrived in, and keys them by the Tune id that now
    holds the trial (a trial handed to a new id after a restart is counted once)."""
    from tuner.service.search.scheduler import PerCellScheduler

    def sched():
        return PerCellScheduler(metric="loss", mode="min", time_attr="step", max_t=60,
                                grace_period=20, reduction_factor=3)

    histories = {"t1": {20: 1.0, 40: 0.9, 60: 0.8}, "t2": {20: 2.0, 40: 1.5},
                 "t3": {20: 0.5, 40: float("nan")}}
    live = sched()
    order = [("t2", 20), ("t1", 20), ("t3", 20), ("t2", 40), ("t1", 40), ("t3", 40), ("t1", 60)]
    for trial_id, step in order:
        live.on_trial_result(None, _trial(trial_id, "a"), {"step": step,
                                                          "loss": histories[trial_id][step]})
    live.on_trial_complete(None, _trial("t1", "a"), {"step": 60, "loss": 0.8})  # Tune's end
    rebuilt = sched()
    rebuilt.rebuild({"a": histories})
    assert rebuilt.get_state()["cells"]["a"]["rungs"] == live.get_state()["cells"]["a"]["rungs"]
    assert rebuilt.rungs()["a"] == [(20.0, 3), (60.0, 1)]
    # the old id of a re-handed trial is gone from the journal: rebuilt once, under the new id
    rebuilt.rebuild({"a": {"t1-new": histories["t1"], "t2": histories["t2"]}})
    assert rebuilt.rungs()["a"] == [(20.0, 2), (60.0, 1)]


def test_trial_told_after_the_snapshot_is_stopped_when_resumed(tmp_path):
    """A trial the searcher told (journal) after Tune's last snapshot is resumed by Tune from
    that snapshot; the scheduler stops it at its first result instead of training it on."""
    first = _searcher(tmp_path, cells={"a": {}}, trials_per_cell=2, scheduler=_scheduler())
    first.suggest("t0")
    first.suggest("t1")
    snapshot = tmp_path / "snap.json"
    first.save(str(snapshot))
    first.on_trial_result("t0", {"step": 1, "loss": 3.0})
    first.on_trial_complete("t0", {"step": 1, "loss": 3.0})  # told PRUNED, after the snapshot
    scheduler = _scheduler()
    fresh = _searcher(tmp_path, cells={"a": {}}, trials_per_cell=2, scheduler=scheduler)
    fresh.restore(str(snapshot))
    assert scheduler.on_trial_result(None, _trial("t0", "a"), {"step": 2, "loss": 1.0}) == \
        TrialScheduler.STOP
    assert scheduler.on_trial_result(None, _trial("t1", "a"), {"step": 1, "loss": 1.0}) == \
        TrialScheduler.CONTINUE
    fresh.on_trial_complete("t0", {"step": 2, "loss": 1.0})  # not told twice
    assert _state_by_number(fresh, "a")[0] == "PRUNED"
