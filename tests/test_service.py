"""The whole service as users run it: ``python -m tuner.run`` on a real local Ray cluster, real
Optuna studies, W&B offline writing real run files, and a driver killed with SIGKILL and rerun.

Each test runs the CLI in a subprocess on ``tests/fixtures/tiny.yaml`` (two cells, a learning-
rate range that reaches diverging rates, so COMPLETE, PRUNED and diverged trials all occur).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from tiny_run import FAKE_KEY, TINY, cli, finish, settle
from wandb_files import check_member_runs, run_config, run_folders, wandb_runs

from tuner.service.search.study import TUNE_ID_ATTR

CELLS = ["patch=1", "patch=4"]
TRIALS_PER_CELL = 10

pytestmark = pytest.mark.slow


def studies(root: Path, cells: list[str] = CELLS, folder: str = "studies"
            ) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out = {}
    for cell in cells:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(root / folder / f"{cell}.journal")))
        try:
            out[cell] = optuna.load_study(study_name=cell, storage=storage).trials
        except KeyError:  # the driver made the journal and has not yet written the study in it
            out[cell] = []
    return out


def check_finished_experiment(root: Path) -> pd.DataFrame:
    """What every finished run must satisfy; returns the report's trial table."""
    per_cell = studies(root)
    best = json.loads((root / "search_best.json").read_text())
    for cell, trials in per_cell.items():
        assert len(trials) == TRIALS_PER_CELL, (cell, [t.state for t in trials])
        numbers = [t.number for t in trials]
        assert len(set(numbers)) == len(numbers)
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        assert complete, cell
        # the best lr comes from a full-budget, finite trial
        chosen = min(complete, key=lambda t: t.value)
        assert best[cell]["lr"] == pytest.approx(chosen.params["lr"])
    report = pd.read_csv(root / "report" / "trials.csv")
    search = report[report.stage == "search"]
    assert not search.duplicated(["cell", "number"]).any()
    assert len(search) == TRIALS_PER_CELL * len(CELLS)
    finals = json.loads((root / "finals.json").read_text())
    for cell in CELLS:
        rows = [r for r in finals if r["cell"] == cell]
        assert sorted(r["seed"] for r in rows) == [0, 1]
        assert all(r["step"] == 60 and not r["diverged"] for r in rows)
        assert all("eval/score_t+16" in r for r in rows)
    summary = (root / "report" / "summary.md").read_text()
    assert "## Verdict" in summary and "nmse grows with the patch size" in summary
    assert (root / "report" / "claim1.png").stat().st_size > 0
    return report


@pytest.fixture
def reference(tiny_reference) -> tuple[Path, str]:
    """One uninterrupted run of the tiny experiment (after its pilot): the reference every
    interrupted run must end equal to (``conftest.tiny_reference``, shared with the viewer)."""
    return tiny_reference


def outcome(root: Path) -> dict:
    """What an interrupted-then-resumed run must share with the uninterrupted one: per cell the
    trials (lr and final state, in order), the best lr and the ASHA rung contents."""
    from tuner.service import experiment
    from tuner.service.dirs import ExperimentDirs
    from tuner.service.stages import build_search

    exp = experiment.load(str(TINY))
    searcher, scheduler = build_search(exp, ExperimentDirs(root))
    searcher.restore_from_dir(str(root / "search"))
    best = json.loads((root / "search_best.json").read_text())
    return {cell: {"trials": [(round(t.params["lr"], 12), t.state.name) for t in trials],
                   "best_lr": round(best[cell]["lr"], 12),
                   "rungs": scheduler.rungs()[cell]}
            for cell, trials in studies(root).items()}


def test_smoke_grid_end_to_end(reference, tmp_path):
    root, out = reference
    check_finished_experiment(root)
    # the pilot measured both shapes (patch 1 and 4 compile apart) and the run reported
    # against its projection
    pilot = json.loads((root / "pilot.json").read_text())
    assert sorted(pilot["shapes"]) == CELLS
    for shape in pilot["shapes"].values():
        c = shape["cost"]
        assert all(math.isfinite(v) and v >= 0 for v in c.values()), c
        assert c["step_s"] > 0 and c["finals_step_s"] > 0 and c["after_training_s"] > 0
        assert c["peak_bytes"] > 2**20
    assert pilot["cluster"]["slots"] == 1  # max_concurrent: 1
    assert pilot["projection"]["current"]["total_s"] > 0
    assert "projected wall time here (1 slots)" in out
    assert "search: " in out and "the pilot projected" in out
    states = {cell: {t.state.name for t in trials} for cell, trials in studies(root).items()}
    assert all({"COMPLETE", "PRUNED"} <= s for s in states.values()), states
    # diverging rates were tried, told PRUNED with a NaN (marked diverged), and never chosen
    diverged = [t for trials in studies(root).values() for t in trials
                if t.user_attrs.get("diverged")]
    assert diverged and all(t.params["lr"] > 100 and t.state.name == "PRUNED" and
                            math.isnan(max(t.intermediate_values.items())[1]) for t in diverged)
    best = json.loads((root / "search_best.json").read_text())
    assert all(b["lr"] < 100 for b in best.values())
    # W&B offline: one run per search trial (one rate each) and per final seed, and one
    # program run per finals trial
    runs = check_member_runs(root)
    assert len(runs) == TRIALS_PER_CELL * len(CELLS) + 2 * len(CELLS) + len(CELLS)
    assert "Ray dashboard: 127.0.0.1" in out or "Ray dashboard: http://127.0.0.1" in out
    status = json.loads((root / "status.json").read_text())
    assert status["stage"] == "finals" and status["cells_done"] == len(CELLS)
    # each Tune snapshot has the whole copy the driver kept (tuner.service.snapshot_copy):
    # the last one, written as the run ended, the same bytes as Tune's synced file
    snapshots = [p for pattern in ("experiment_state-*.json", "searcher-state-*.pkl")
                 for p in root.rglob(pattern)]
    assert {p.parent.name for p in snapshots} >= {"finals"}, snapshots
    for p in snapshots:
        assert p.with_name(p.name + ".whole").read_bytes() == p.read_bytes(), p
    # the API key reaches no log, trial config or file under the experiment folder
    assert FAKE_KEY not in out
    leaked = [p for p in root.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert not leaked, leaked


def second_driver_refused(root: Path, first, out: Path) -> str:
    """While ``first`` drives the folder ``root``: the viewer still reads it, and a second
    driver on it (a double ``ray job submit``, a requeued Slurm job) exits at once with code 2
    naming the holder, before starting Ray. Returns the second driver's output."""
    from tuner.view import load

    deadline = time.time() + 120
    while not (root / "driver.lock").exists() or str(first.pid) not in (
            root / "driver.lock").read_text():
        assert time.time() < deadline and first.poll() is None, "the first driver took no lock"
        time.sleep(0.1)
    assert not load.search_trials(load.open_folder(root)).empty  # reading needs no lock
    started = time.monotonic()
    second = cli(out)
    text, _ = second.communicate(timeout=120)
    assert second.returncode == 2, text[-3000:]
    assert first.poll() is None  # refused while the first ran, not after it
    assert time.monotonic() - started < 60  # at once: no Ray, no waiting
    assert f"{root} is in use by another driver: host " in text and "Traceback" not in text
    assert "Ray dashboard" not in text
    return text


def test_research_one_cell_keeps_the_other_cells(reference, shared_ray, tmp_path):
    """``--research CELL:LOW:HIGH`` on a finished experiment searches that cell again over the
    new range in the same folder: the other cell's trials and finals are kept as they were, the
    cell's best rate is the best full-budget trial of both rounds, only its finals retrain, and
    the round is recorded (a rerun without the flag finds the experiment finished)."""
    import shutil

    root = tmp_path / "tiny"
    shutil.copytree(reference[0], root)
    before, best_before = studies(root), json.loads((root / "search_best.json").read_text())
    finals_before = json.loads((root / "finals.json").read_text())
    old = best_before["patch=4"]["lr"]
    low, high = old / 3, old * 3  # around the old best: some trial here beats it
    # W&B off: its runs are checked by the reference and the fault rows (the same callback)
    first = cli(tmp_path, "--research", f"patch=4:{low!r}:{high!r}", "--no-wandb",
                cluster=shared_ray)
    second_out = second_driver_refused(root, first, tmp_path)
    out = finish(first)  # the first driver, unharmed by the second
    assert "in use by another driver" not in out and "taking over" not in out
    assert f"pid {first.pid}" in second_out
    assert "resuming the search" in out  # round 1 read back from its Tune folder, not rerun
    after = studies(root)
    fields = lambda ts: [(t.number, t.params, t.state, t.value) for t in ts]  # noqa: E731
    assert {c: fields(ts) for c, ts in after.items()} == {c: fields(ts) for c, ts in before.items()}
    wider = studies(root, ["patch=4"], "studies/search_research_1")["patch=4"]
    assert len(wider) == TRIALS_PER_CELL
    assert all(low <= t.params["lr"] <= high for t in wider)
    best = json.loads((root / "search_best.json").read_text())
    assert best["patch=1"] == best_before["patch=1"]
    complete = [t for t in before["patch=4"] + wider if t.state.name == "COMPLETE"]
    chosen = min(complete, key=lambda t: t.value)
    assert chosen in wider, "the narrow round found no better rate: pick another range"
    assert best["patch=4"]["lr"] == pytest.approx(chosen.params["lr"])
    assert best["patch=4"]["round"] == "search_research_1"
    assert best["patch=4"]["range"] == [low, high]
    finals = json.loads((root / "finals.json").read_text())
    assert [r for r in finals if r["cell"] == "patch=1"] == [
        r for r in finals_before if r["cell"] == "patch=1"]
    assert "finals kept (best rate unchanged): patch=1" in out
    redone = [r for r in finals if r["cell"] == "patch=4"]
    assert sorted(r["seed"] for r in redone) == [0, 1]
    assert all(r["lr"] == best["patch=4"]["lr"] and r["step"] == 60 for r in redone)
    trials = pd.read_csv(root / "search_trials.csv")
    assert (trials["round"] == "search_research_1").sum() == TRIALS_PER_CELL
    assert set(trials.loc[trials["round"] == "search_research_1", "cell"]) == {"patch=4"}
    assert "search_research_1" in (root / "report" / "summary.md").read_text()
    # recorded: a rerun without the flag has nothing left to do (a finished experiment is
    # not rerun)
    again = finish(cli(tmp_path, "--no-wandb", cluster=shared_ray))
    assert "resuming" not in again and "report:" in again


def check_wandb_runs_continue(root: Path, resumed: set[str]) -> None:
    """After a stop and a rerun, ``wandb sync`` still gives one run per member, each holding
    every iteration its trial reported for it, once (``check_member_runs``: a rerun replays
    what a killed driver's logging actor never wrote, and only that). A trial resumed after
    the stop (``resumed``: it had reported, so Tune's snapshot holds it) continues its runs:
    the same ids, resume on in every folder (so ``wandb sync`` appends to them)."""
    check_member_runs(root)
    folders = wandb_runs(root)
    assert all(resume is not False for f in folders.values() for resume, _ in f)
    of_trial = {}
    for run_id, folder in run_folders(root):
        of_trial.setdefault(run_config(folder).get("tune_trial_id"), set()).add(run_id)
    assert resumed <= set(of_trial), (resumed, set(of_trial))


def finished_trials(root: Path) -> int:
    if not (root / "studies").exists():
        return 0
    return sum(t.state.is_finished() for ts in studies(root).values() for t in ts)


def trial_midway(root: Path, stage: str) -> bool:
    """Whether the newest trial of the stage has reported (so it has a checkpoint, Tune's
    snapshot holds it and its W&B run has results) and has not ended (its last result short of
    the budget; in the search, its Optuna trial still running): stopping now leaves a trial to
    resume mid-run."""
    folders = sorted((root / stage).glob("*/result.json"), key=lambda f: f.parent.stat().st_ctime)
    if not folders or not folders[-1].read_text().strip():
        return False
    try:
        rows = [json.loads(line) for line in folders[-1].read_text().splitlines() if line]
    except json.JSONDecodeError:  # a line being written
        return False
    if rows[-1]["step"] >= 60:
        return False
    return stage == "finals" or any(
        t.user_attrs.get(TUNE_ID_ATTR) == rows[0]["trial_id"] and not t.state.is_finished()
        for ts in studies(root).values() for t in ts)


FAULTS = [  # (signal, stage, seed of the kill point); the SIGINT rows (Tune's graceful stop,
    # exit code 130) with -m extended: the SIGKILL rows, which save nothing, are the harder case
    # of the same resume, and CI's 30 minutes hold one row per stage
    ("SIGKILL", "search", 0),
    pytest.param("SIGINT", "search", 1, marks=pytest.mark.extended),
    pytest.param("SIGINT", "finals", 2, marks=pytest.mark.extended),
    ("SIGKILL", "finals", 3),
]


def search_done_copy(src: Path, dst: Path) -> None:
    """``src`` (a finished run's folder) as it stood when its search had ended: its finals,
    report and the finals' W&B runs left out, so a run of the same command starts at the
    finals. The finals rows start here: the search before them is the search rows' ground.
    """
    import shutil

    finals_ids = {json.loads(f.read_text().splitlines()[0])["trial_id"]
                  for f in (src / "finals").glob("*/result.json") if f.read_text().strip()}
    # and without the reference's pilot, which the fault rows' own runs never had
    later = {"finals", "finals.json", "report", "times.json", "status.json", "driver.lock",
             "pilot", "pilot.json"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        if Path(folder) == src:
            return later & set(names)
        return {n for n in names if n.startswith("offline-run-")
                and run_config(Path(folder) / n).get("round") == "finals"}

    shutil.copytree(src, dst, symlinks=True, ignore=ignore)
    assert finals_ids and not (dst / "finals").exists()


def tear_last_record(root: Path) -> Path:
    """Cuts the last record of the newest journal in half: what a driver killed mid-append (a
    lost node, a full disk) leaves. Returns the journal."""
    journal = max((root / "studies").glob("*.journal"), key=lambda p: p.stat().st_mtime)
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[:start + (len(data) - start) // 2])
    return journal


@pytest.mark.parametrize("sig,stage,seed", FAULTS)
def test_interrupted_then_rerun_equals_uninterrupted(reference, shared_ray, tmp_path, sig, stage,
                                                     seed):
    """The driver stopped at a point chosen by ``seed`` (SIGINT: Tune's own graceful stop;
    SIGKILL: nothing saved), then the same command: every cell ends with the same trials (same
    lrs, same states), the same rungs and the same best lr as the uninterrupted run, nothing
    finished before the stop is redone, and an interrupt never finalises a stage."""
    import random

    point = random.Random(seed).randint(3, 12)
    log = tmp_path / "stopped.log"
    root = tmp_path / "tiny"
    if stage == "finals":
        search_done_copy(reference[0], root)
    proc = cli(tmp_path, start_new_session=True, log=log, cluster=shared_ray)
    deadline = time.time() + 400
    reached, midway, waited_since = False, False, None
    while time.time() < deadline and proc.poll() is None:
        if stage == "search" and finished_trials(root) < point:
            time.sleep(0.1)
            continue
        waited_since = waited_since or time.time()
        midway = trial_midway(root, stage)
        # a tiny trial runs its 60 steps in about a second: on a loaded machine the poll may
        # miss every mid-run moment, so after 30 s at the point it stops anyway
        reached = midway or (stage == "search" and time.time() - waited_since > 30)
        if reached:
            break
        time.sleep(0.1)
    assert reached, f"never reached the {stage} kill point"
    done_file = root / ("search_best.json" if stage == "search" else "finals.json")
    assert not done_file.exists()
    os.kill(proc.pid, getattr(signal, sig))  # the driver only, as a lost login node
    proc.wait(timeout=300)
    # Ray stops the dead driver's trials (its actors) on the shared cluster: nothing of it
    # writes to the folder while the test reads it and the next driver runs
    settle(shared_ray)
    out = log.read_text()
    if sig == "SIGINT":
        assert proc.returncode == 130, out[-3000:]
        assert "interrupted; rerun the same command to resume" in out
        assert "Traceback" not in out.split("interrupted")[-1]
    assert not done_file.exists()  # nothing finalised early
    torn = tear_last_record(root) if (sig, stage) == ("SIGKILL", "search") else None
    before = {cell: [t for t in trials if t.state.is_finished()]
              for cell, trials in studies(root).items()}
    # trials that had reported (Tune's snapshot holds them) and had not ended at the stop
    rows = [[json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in root.glob(f"{stage if stage == 'search' else 'finals'}/*/result.json")]
    reported = {r[0]["trial_id"] for r in rows if r and r[-1]["step"] < 60}
    finished = {t.user_attrs.get(TUNE_ID_ATTR) for ts in before.values() for t in ts}
    resumed = reported - finished
    # SIGKILL stops the trial mid-run; on SIGINT Tune's graceful stop may let it finish first
    assert resumed or sig == "SIGINT" or not midway, "the stop left no trial to resume mid-run"
    print(f"trials resumed mid-run: {sorted(resumed)}")

    again = finish(cli(tmp_path, cluster=shared_ray))
    assert "resuming the " + ("search" if stage == "search" else "finals") in again
    if sig == "SIGKILL":  # nothing released the killed driver's lock: taken over
        assert "taking over the lock" in again and "is not running on this host" in again
    if torn is not None:  # repaired, the original kept; the rest of the test: nothing lost
        assert f"repaired {torn}: its last record" in again
        assert torn.with_name(torn.name + ".torn-1").exists()
    check_finished_experiment(root)
    after = studies(root)
    for cell, trials in before.items():  # nothing finished before the stop was redone
        by_number = {t.number: t for t in after[cell]}
        for t in trials:
            assert by_number[t.number].state == t.state
            assert by_number[t.number].params == t.params
    ours = outcome(root)
    assert ours == outcome(reference[0])
    for cell, trials in after.items():  # every trial that reached step 20 is in that rung
        reached = sum(1 for t in trials if math.isfinite(t.intermediate_values.get(20, math.nan)))
        assert dict(ours[cell]["rungs"]).get(20, 0) == reached, (cell, ours[cell]["rungs"])
    report = pd.read_csv(root / "report" / "trials.csv")
    assert not report.duplicated(["stage", "cell", "number", "seed"]).any()
    check_wandb_runs_continue(root, resumed)
    # the finals resumed from their checkpoints end where the uninterrupted ones did
    def finals_of(folder: Path) -> pd.DataFrame:
        rows = pd.DataFrame(json.loads((folder / "finals.json").read_text()))
        return rows.sort_values(["cell", "seed"]).reset_index(drop=True)

    ours_finals, ref_finals = finals_of(root), finals_of(reference[0])
    assert ours_finals[["cell", "seed", "lr", "step"]].equals(
        ref_finals[["cell", "seed", "lr", "step"]])
    for metric in ("eval/nmse", "train_loss"):  # the same programs on this CPU: float32 noise
        assert ours_finals[metric].to_numpy() == pytest.approx(
            ref_finals[metric].to_numpy(), rel=1e-4), metric
