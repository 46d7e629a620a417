"""The population search through the real CLI on a local Ray cluster: two populations at once,
then the same run killed mid-search and resumed ends with the same trials, states, sources and
picks (the search no longer depends on arrival order), and every report file keeps its meaning;
W&B (offline) holds one run per member, killed or not.
"""

import json
import os
import random
import signal
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from tiny_run import cli, finish, settle
from wandb_files import check_member_runs

from tuner.service.search.halving import keep_count
from tuner.service.search.pick import pick_rate
from tuner.service.search.study import TUNE_ID_ATTR

TINY_POP = Path(__file__).parent / "fixtures" / "tinypop.yaml"
CELLS = ["patch=1", "patch=4"]

pytestmark = pytest.mark.slow


def studies(root: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out = {}
    for cell in CELLS:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(root / "studies" / f"{cell}.journal")))
        out[cell] = optuna.load_study(study_name=cell, storage=storage).trials
    return out


def seen(trials: list[optuna.trial.FrozenTrial]) -> tuple[list, list]:
    return [t.params["lr"] for t in trials], [dict(t.intermediate_values) for t in trials]


def outcome(root: Path) -> dict:
    best = json.loads((root / "search_best.json").read_text())
    return {cell: {"trials": [(round(t.params["lr"], 12), t.state.name, t.user_attrs["wave"],
                               t.user_attrs["source"], sorted(t.intermediate_values))
                              for t in trials],
                   "best_lr": round(best[cell]["lr"], 12)}
            for cell, trials in studies(root).items()}


@pytest.fixture(scope="module")
def population_reference(tmp_path_factory, shared_ray) -> Path:
    out = tmp_path_factory.mktemp("population")
    finish(cli(out, experiment=TINY_POP, cluster=shared_ray))
    return out / "tinypop"


def test_population_search_end_to_end(population_reference):
    root = population_reference
    per_cell = studies(root)
    best = json.loads((root / "search_best.json").read_text())
    for cell, trials in per_cell.items():
        assert len(trials) == 10
        waves = [t.user_attrs["wave"] for t in trials]
        assert waves == [0] * 5 + [1] * 5
        assert [t.user_attrs["source"] for t in trials[:5]] == ["stratified"] * 5
        assert trials[5].user_attrs["source"] == f"neighbour:{[c for c in CELLS if c != cell][0]}"
        for wave in (0, 1):  # halving on the whole rung: ceil(5 / 3) = 2 reach the budget
            members = [t for t in trials if t.user_attrs["wave"] == wave]
            finite = [t for t in members if t.intermediate_values.get(20, float("nan")) ==
                      t.intermediate_values.get(20, float("nan"))]
            complete = [t for t in members if t.state.name == "COMPLETE"]
            # the ones kept were the best at step 20 (ceil(n / 3) of the n not diverged by
            # then, as ASHA's rung ignores NaN); a kept one may still diverge later
            kept = sorted(finite, key=lambda t: (t.intermediate_values[20], t.number))[
                :keep_count(len(finite), 3)]
            assert {t.number for t in complete} <= {t.number for t in kept}, (cell, wave)
            for t in kept:
                assert t.state.name == "COMPLETE" or t.user_attrs.get("diverged"), (cell, t)
            for t in [t for t in members if t.number not in {k.number for k in kept}]:
                assert t.state.name == "PRUNED" and max(t.intermediate_values) <= 20
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        survivor = min(complete, key=lambda t: t.value)
        assert best[cell]["survivor_lr"] == pytest.approx(survivor.params["lr"])
        assert best[cell]["value"] == pytest.approx(survivor.value)
        # the rate is the pick fitted to the journals' values, the neighbour's pooled in
        # (tuner.service.search.pick; its answers on known parabolas: tests/test_pick*.py)
        other = [c for c in CELLS if c != cell][0]
        assert best[cell]["lr"] == pytest.approx(pick_rate(
            *seen(trials), 1e-4, 1e5, neighbours=[seen(per_cell[other])]).lr)
        assert any(t.user_attrs.get("diverged") for t in trials)  # the range reaches NaN
    search = pd.read_csv(root / "search_trials.csv")
    assert len(search) == 20 and set(search.state) <= {"COMPLETE", "PRUNED"}
    assert (search.groupby("cell").last_step.max() == 60).all()
    report = pd.read_csv(root / "report" / "trials.csv")
    assert len(report[report.stage == "search"]) == 20
    assert len(json.loads((root / "finals.json").read_text())) == 4
    # W&B: one run per member (search rates and final seeds), as result.json has them
    runs = check_member_runs(root)
    assert sum(r["job_type"] == "program" for r in runs.values()) == \
        len(list(root.glob("search/*/result.json"))) + len(list(root.glob("finals/*/result.json")))
    members = [r for r in runs.values() if r["job_type"] != "program"]
    assert len(members) == 20 + 4
    assert {r["config"]["source"] for r in members if r["config"]["stage"] == "search"} == \
        {"stratified", "tpe", "neighbour:patch=1", "neighbour:patch=4"}


def test_killed_then_resumed_equals_uninterrupted(population_reference, shared_ray, tmp_path):
    """SIGKILL once a population has reported and some members ended (at a point chosen by a
    seed), then the same command: the same trials, states, waves, sources and best rates."""
    point = random.Random(0).randint(3, 8)
    log = tmp_path / "stopped.log"
    proc = cli(tmp_path, start_new_session=True, log=log, experiment=TINY_POP,
               cluster=shared_ray)
    root = tmp_path / "tinypop"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        done = sum(t.state.is_finished() for ts in studies(root).values() for t in ts) \
            if (root / "studies").exists() else 0
        if done >= point:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    settle(shared_ray)
    assert not (root / "search_best.json").exists()
    before = {cell: {t.number: (t.state, t.params) for t in ts if t.state.is_finished()}
              for cell, ts in studies(root).items()}
    assert 0 < sum(map(len, before.values())) < 20
    again = finish(cli(tmp_path, experiment=TINY_POP, cluster=shared_ray))
    assert "resuming the search" in again
    after = studies(root)
    for cell, told in before.items():  # nothing told before the kill was told again
        by_number = {t.number: t for t in after[cell]}
        for number, (state, params) in told.items():
            assert (by_number[number].state, by_number[number].params) == (state, params)
    assert outcome(root) == outcome(population_reference)
    # each population's members went to one Tune trial (at most one re-handing after the kill)
    for trials in after.values():
        for wave in (0, 1):
            ids = {t.user_attrs[TUNE_ID_ATTR] for t in trials if t.user_attrs["wave"] == wave}
            assert len(ids) == 1
    # W&B after the kill: still one run per member, every step once over its folders (a rerun
    # logs what the killed driver's logging actor never wrote, and only that)
    check_member_runs(root)


def test_viewer_reads_every_member(population_reference):
    """The viewer splits a population trial into its members: one landscape point and one
    search curve per Optuna trial, with that trial's state and rate."""
    from tuner.view import load

    folder = load.open_folder(population_reference)
    search = pd.read_csv(population_reference / "search_trials.csv")
    points = load.landscape(folder)
    assert sorted(zip(points.cell, points.number, points.lr, strict=False)) == \
        sorted(zip(search.cell, search.number, search.lr, strict=False))
    complete = points[points.kind == "complete"].merge(search, on=["cell", "number"])
    assert (complete.value_x == complete.value_y).all() and (complete.step == 60).all()
    curves = load.curves(folder)
    per_member = curves[curves.stage == "search"].groupby(["cell", "trial"])
    assert per_member.ngroups == len(search)
    last = per_member.step.max().reset_index()
    assert sorted(last.step) == sorted(search.last_step)
    # the timeline: one bar per member, each with its own state (not its population's)
    spans = load.timeline(folder)
    search_spans = spans[spans["round"] == "search"]
    assert len(search_spans) == len(search)
    kinds = points.set_index(["cell", "number"]).kind
    assert sorted(search_spans.state) == sorted(kinds)
    assert {"complete", "pruned", "diverged"} <= set(search_spans.state)
    for trial, bars in search_spans.groupby("trial"):  # members of one population: one start
        assert bars.start.nunique() == 1 and len(bars) == 5, trial
        pruned = bars[bars.state == "pruned"]
        assert (pruned.end <= bars.end.max()).all()
    assert (spans[spans["round"] == "finals"].state == "final").all()
    assert len(spans[spans["round"] == "finals"]) == 4


# extended: tests/test_split.py proves the split with the same hook in seconds (each member's
# trajectory equals the whole program's, and the donated state survives); this one adds the
# service around it at the cost of a whole run on a cluster of its own
@pytest.mark.extended
def test_a_forced_out_of_memory_splits_the_program_and_picks_the_same(
        population_reference, tmp_path, monkeypatch):
    """Every program of more than two members fails as XLA's out-of-memory error would (the
    test hook of tuner/core/split.py): the trials split their populations and carry on, and
    the search ends with the trials, states, sources and picks of the unsplit run."""
    from tuner.core.split import TEST_OOM_ENV

    monkeypatch.setenv(TEST_OOM_ENV, "2")
    out = finish(cli(tmp_path, "--no-wandb", experiment=TINY_POP))
    assert "out of device memory with 5 members in one program" in out
    split, whole = outcome(tmp_path / "tinypop"), outcome(population_reference)
    # the fitted pick (search.pick: fit) is a smooth function of the members' values, which a
    # program in pieces computes equal to float32 rounding only: equal to 1e-4 of the rate;
    # the members, states and survivors exactly
    for cell in whole:
        assert split[cell].pop("best_lr") == pytest.approx(whole[cell].pop("best_lr"), rel=1e-4)
    assert split == whole
    for root in (tmp_path / "tinypop", population_reference):
        best = json.loads((root / "search_best.json").read_text())
        assert best and all(b["pick"] == "fit" for b in best.values())
    survivors = [{c: b["survivor_lr"] for c, b in json.loads(
        (root / "search_best.json").read_text()).items()}
        for root in (tmp_path / "tinypop", population_reference)]
    assert survivors[0] == survivors[1]
