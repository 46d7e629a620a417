"""The two stages of an experiment, each one Ray Tune run that resumes where it stopped.

Stage 1 (search): one Tuner for the whole grid; :class:`PerCellSearcher` keeps an Optuna study
per cell and :class:`PerCellScheduler` an ASHA per cell. Stage 2 (finals): the best learning
rate of every cell retrained with each of the experiment's seeds at the full budget (one trial
per cell, its seeds vmapped in one program), ending in the rollout evaluation. A stage writes
its result file only when all of its trials have ended; that file is the marker that the stage
is done and is never rerun.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from tuner.service import ray_fixes, trial_names
from tuner.service.concurrency import ClusterConcurrency, per_cell_cap
from tuner.service.dirs import ExperimentDirs
from tuner.service.experiment import Experiment
from tuner.service.files import read_json, write_json
from tuner.service.folder_check import REMEDY
from tuner.service.plan.programs import StagePlan
from tuner.service.plan.stage import PlanError, slots, stage_plan
from tuner.service.search import rounds
from tuner.service.search.population import PopulationSearcher, wave_sizes
from tuner.service.search.rounds import SearchRound
from tuner.service.search.scheduler import PerCellScheduler, StopTold
from tuner.service.search.searcher import PerCellSearcher
from tuner.service.snapshot_copy import SnapshotCopy
from tuner.service.status import StatusFile
from tuner.service.trial_spec import (
    TrialSpec,
    Worker,
    overrides,
    part,
    search_template,
    shared_final_spec,
)
from tuner.service.trials import train_finals_trial, train_population_trial, train_trial
from tuner.service.wandb_logging import make_callback

TIME_ATTR = "step"
MEMBER_TOO_LARGE = "does not fit the device even alone"  # tuner.core.split.MemberTooLarge
REUSE_ENV = "TUNER_REUSE_ACTORS"


def reuse_actors() -> bool:
    """One actor per trial unless ``TUNER_REUSE_ACTORS=1``. Ray takes an actor's dashboard name
    (its repr, :mod:`tuner.service.trial_names`) once, when it starts, so a reused actor would
    show its first trial's cell and rate for every later one; a fresh actor costs a worker
    start per trial (imports, the step read from the persistent compile cache; bench/README.md,
    "One actor per trial"). Reused actors are named by experiment and stage only."""
    return os.environ.get(REUSE_ENV, "0") == "1"


class Interrupted(Exception):
    """A stage's Tune run ended before all of its trials did (Ctrl+C, SIGUSR1, a lost
    driver): nothing is finalised, rerunning the same command resumes it."""

    def __init__(self, stage: str, detail: str):
        super().__init__(f"{stage} interrupted; rerun the same command to resume ({detail})")


def _write_json(path: Path, data: Any) -> None:
    write_json(path, data, default=str)


def trainable(exp: Experiment, fn=train_trial, gpu_share: float | None = None):
    """``fn`` with the experiment's base config bound, its per-trial resources (``gpu_share``:
    the stage plan's, default the file's), and its actor named by what it trains in the Ray
    dashboard (:mod:`tuner.service.trial_names`)."""
    bound = trial_names.named(tune.with_parameters(fn, base=exp.base), exp.name,
                              reused=reuse_actors())
    share = exp.resources.gpus_per_trial if gpu_share is None else gpu_share
    return tune.with_resources(bound, {"cpu": exp.resources.cpus_per_trial, "gpu": share})


def _run_config(exp: Experiment, dirs: ExperimentDirs, name: str, status: StatusFile,
                wandb: bool) -> tune.RunConfig:
    # Tune's CSV and JSON result files, but not its TensorBoard logger: W&B has the curves, and
    # TensorBoardX's writer threads raise at interpreter exit when the driver stops on a signal
    # (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS, set by tuner.service.cli, keeps Tune from adding it)
    # SnapshotCopy keeps a whole copy of each Tune snapshot: a kill while Tune copies its
    # snapshot into the folder leaves that cut (tuner.service.snapshot_copy)
    callbacks = [status, CSVLoggerCallback(), JsonLoggerCallback(), SnapshotCopy()]
    if wandb:
        callbacks.append(make_callback(exp.wandb.project, exp.name, dirs.wandb, exp.asha.max_t))
    return tune.RunConfig(
        storage_path=str(dirs.root), name=name, callbacks=callbacks, verbose=1,
        # two: the checkpoint that Tune's last snapshot names survives until the next snapshot
        # (with one, registering a new checkpoint deleted it first: a kill in between
        # restored a trial to a deleted checkpoint)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        # a lost worker node (e.g. a preempted Slurm job) retries from the last checkpoint
        failure_config=tune.FailureConfig(max_failures=3),
    )


def worker(exp: Experiment, dirs: ExperimentDirs, gpu_share: float | None = None) -> Worker:
    """What a trial's process must set up before JAX starts (see tuner.service.trials)."""
    share = exp.resources.gpus_per_trial if gpu_share is None else gpu_share
    return Worker(str(dirs.jax_cache), min(1.0, share))


def _cluster_cap(exp: Experiment, gpu_share: float) -> ClusterConcurrency | None:
    """With ``max_concurrent: auto``, the cap on running trials the cluster's resources set."""
    return ClusterConcurrency(exp.resources.cpus_per_trial, gpu_share) \
        if exp.search.auto_concurrency else None


def search_plan(exp: Experiment, dirs: ExperimentDirs, rnd: SearchRound) -> StagePlan:
    """The round's plan: its programs (population search) and each trial's GPU share."""
    s = exp.search
    return stage_plan(exp, dirs, rnd.name, list(rnd.cells),
                      s.population if s.population > 1 else 1)


def first_round(exp: Experiment, dirs: ExperimentDirs) -> SearchRound:
    return SearchRound("search", exp.cells(), exp.search.lr_low, exp.search.lr_high,
                       dirs.studies)


def search_trainable(exp: Experiment, plan: StagePlan):
    """The search's trainable: population trials where ``search.population`` > 1."""
    return trainable(exp, train_population_trial if exp.search.population > 1 else train_trial,
                     plan.gpu_share)


def build_population_search(exp: Experiment, dirs: ExperimentDirs, rnd: SearchRound,
                            plan: StagePlan, scheduler: StopTold | None = None
                            ) -> PopulationSearcher:
    """The population searcher of a round; its programs (which cells share a trial) are the
    plan's: cells of one shape together where ``search.share_program`` says so, cut to fit
    the card and spread over the GPUs."""
    coords = {cell: tuple(exp.grid[axis].index(v) for axis, v in over.items())
              for cell, over in exp.cells().items() if cell in rnd.cells}
    s, a = exp.search, exp.asha
    return PopulationSearcher(
        rnd.cells, coords, plan.groups, s.trials_per_cell, s.population, rnd.lr_low,
        rnd.lr_high, a.metric, a.mode, a.max_t, a.grace_period, a.reduction_factor,
        rnd.study_dir, worker(exp, dirs, plan.gpu_share), seed=0,
        max_running=_cluster_cap(exp, plan.gpu_share), scheduler=scheduler, pick=s.pick)


def build_search(exp: Experiment, dirs: ExperimentDirs, rnd: SearchRound | None = None
                 ) -> tuple[PerCellSearcher | PopulationSearcher, PerCellScheduler | StopTold]:
    """The searcher/scheduler pair; the searcher saves the scheduler's rungs in its snapshots.
    A population search's trials halve their members themselves: its scheduler only stops
    trials told finished after Tune's last snapshot."""
    rnd = rnd or first_round(exp, dirs)
    plan = search_plan(exp, dirs, rnd)
    if exp.search.population > 1:
        stop = StopTold()
        return build_population_search(exp, dirs, rnd, plan, stop), stop
    s, a = exp.search, exp.asha
    scheduler = PerCellScheduler(metric=a.metric, mode=a.mode, time_attr=TIME_ATTR,
                                 max_t=a.max_t, grace_period=a.grace_period,
                                 reduction_factor=a.reduction_factor)
    cells = {cell: search_template(over, worker(exp, dirs, plan.gpu_share))
             for cell, over in rnd.cells.items()}
    searcher = PerCellSearcher(cells, s.trials_per_cell, rnd.lr_low, rnd.lr_high,
                               metric=a.metric, mode=a.mode, time_attr=TIME_ATTR,
                               max_t=a.max_t, study_dir=rnd.study_dir, seed=0,
                               scheduler=scheduler,
                               max_running=_cluster_cap(exp, plan.gpu_share),
                               per_cell_running=per_cell_cap(s.trials_per_cell)
                               if s.auto_concurrency else None)
    return searcher, scheduler


def _run_round(exp: Experiment, dirs: ExperimentDirs, rnd: SearchRound, wandb: bool
               ) -> PerCellSearcher:
    """Runs (or resumes) one round; returns a searcher restored from its final snapshot."""
    path = dirs.round_runs(rnd.name)
    ray_fixes.tolerate_deleted_checkpoints()
    plan = search_plan(exp, dirs, rnd)
    if tune.Tuner.can_restore(path):
        print(f"resuming the search from {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), search_trainable(exp, plan), resume_errored=False,
                                   restart_errored=False)
    else:
        searcher, scheduler = build_search(exp, dirs, rnd)
        # a population trial holds a whole wave of a cell: a cell is done after its waves
        s = exp.search
        per_cell = (len(wave_sizes(s.trials_per_cell, s.population)) if s.population > 1
                    else s.trials_per_cell)
        status = StatusFile(dirs.status, rnd.name, list(rnd.cells), per_cell, exp.objective)
        tuner = tune.Tuner(
            search_trainable(exp, plan),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=-1,
                                        max_concurrent_trials=slots(plan, s.max_concurrent),
                                        reuse_actors=reuse_actors()),
            run_config=_run_config(exp, dirs, rnd.name, status, wandb))
    results = tuner.fit()
    raise_member_too_large(results)
    searcher, _ = build_search(exp, dirs, rnd)
    searcher.restore_from_dir(str(path))
    _check_search_finished(rnd, results, searcher, exp.search.trials_per_cell)
    return searcher


def raise_member_too_large(results) -> None:
    """Ends the stage with the trial's own words when a member alone did not fit the device
    (:class:`tuner.core.split.MemberTooLarge`): retrying or widening would rebuild the same
    program, so the user must change the shape or the card."""
    for r in results:
        text = "" if r.error is None else str(r.error)
        if MEMBER_TOO_LARGE in text:
            line = next(x for x in text.splitlines() if MEMBER_TOO_LARGE in x)
            raise PlanError(line.split("MemberTooLarge: ")[-1].strip())


def _check_search_finished(rnd: SearchRound, results, searcher: PerCellSearcher,
                           per_cell: int) -> None:
    """Raises :class:`Interrupted` unless every Tune trial ended and every cell's study holds
    ``per_cell`` finished trials. Tune's ``fit`` returns normally on SIGINT/SIGUSR1, so this is
    what keeps a paused search from being taken as its result."""
    unended = len(results) - results.num_terminated - results.num_errors
    df = searcher.trials_dataframe()
    short = {c: int((df.cell == c).sum()) for c in rnd.cells if (df.cell == c).sum() < per_cell}
    running = sorted(set(df.loc[~df.state.isin(["COMPLETE", "PRUNED", "FAIL"]), "cell"]))
    if unended or short or running:
        raise Interrupted(rnd.name, f"{unended} trial(s) not ended; cells short of "
                          f"{per_cell} trials: {short or 'none'}; cells with trials still "
                          f"open: {running or 'none'}")


def _better(exp: Experiment, a: dict, b: dict | None) -> bool:
    return exp.objective.better(a["value"], None if b is None else b["value"])


class SearchFailed(Exception):
    """Some cell has no trial that ran the full budget (every one diverged or failed)."""


def run_search(exp: Experiment, dirs: ExperimentDirs, wandb: bool = True,
               widen_edges: bool = False, research: Sequence[rounds.Research] = ()
               ) -> dict[str, Any]:
    """Stage 1. Returns cell -> best {lr, value, trial_number, at_edge, range, round}, chosen
    among COMPLETE (full-budget, finite) trials of all the cell's rounds.

    ``--widen-edges`` and ``--research`` add rounds (:mod:`tuner.service.search.rounds`,
    recorded in the folder); a finished search is reopened only for rounds it lacks, its
    finished rounds read back from their Tune folders, not rerun."""
    options = rounds.record(dirs.options, widen_edges, research)
    if dirs.best.exists() and not options.pending:
        return read_json(dirs.best, REMEDY[dirs.best.name])
    first = first_round(exp, dirs)
    searcher = _run_round(exp, dirs, first, wandb)
    best = {c: b and {**b, "range": [exp.search.lr_low, exp.search.lr_high], "round": first.name}
            for c, b in searcher.best_per_cell().items()}
    frames = [searcher.trials_dataframe().assign(round=first.name)]

    def add_round(rnd: SearchRound) -> None:
        found = _run_round(exp, dirs, rnd, wandb)
        for c, b in found.best_per_cell().items():
            if b and _better(exp, b, best[c]):
                best[c] = {**b, "range": [rnd.lr_low, rnd.lr_high], "round": rnd.name}
        frames.append(found.trials_dataframe().assign(round=rnd.name))

    if options.widen_edges:
        half_span = math.sqrt(exp.search.lr_high / exp.search.lr_low)
        for edge, center in (("low", exp.search.lr_low), ("high", exp.search.lr_high)):
            cells = {c: over for c, over in exp.cells().items()
                     if (best[c] and best[c]["at_edge"] == edge)
                     or (best[c] is None and edge == "low")}  # all diverged: try lower
            if cells:
                name = dirs.wider_round(edge)
                add_round(SearchRound(name, cells, center / half_span, center * half_span,
                                      dirs.round_studies(name)))
    for rnd in options.research_rounds(exp.cells(), dirs.round_studies):
        add_round(rnd)
    missing = [c for c, b in best.items() if b is None]
    if missing:
        hint = ("the wider round found none either: check the trial logs under "
                f"{dirs.round_runs('search')}, or search lower with --research CELL:LOW:HIGH"
                if options.widen_edges else
                "rerun the same command with --widen-edges (these cells are searched again "
                "at lower rates, the others are kept) or --research CELL:LOW:HIGH")
        raise SearchFailed(f"no trial ran the full budget in cell(s) {missing}: every trial "
                           f"diverged or failed; {hint}")
    pd.concat(frames, ignore_index=True).to_csv(dirs.search_trials, index=False)
    _write_json(dirs.best, best)
    options.completed().save(dirs.options)
    return best


def _stale_finals(dirs: ExperimentDirs, n: int) -> Path:
    return dirs.stale_finals(n)


def set_aside_stale_finals(dirs: ExperimentDirs) -> None:
    """Moves finals that trained rates the search no longer picks (it was widened or a cell
    re-searched) to ``finals-stale-<n>/``, so the finals run again at the current best rates."""
    n = 1
    while _stale_finals(dirs, n).exists():
        n += 1
    stale = _stale_finals(dirs, n)
    stale.mkdir()
    for path in (dirs.finals, *dirs.all_finals_runs()):
        if path.exists():
            path.rename(stale / path.name)
    print(f"the best rates changed: earlier finals moved to {stale}", flush=True)


def interrupted_at_other_rates(dirs: ExperimentDirs, best: dict[str, Any]) -> bool:
    """Whether an unfinished finals run (no ``finals.json`` yet) trains a rate that the search
    no longer picks: a re-search or widening after Ctrl+C in the finals. Resuming it would
    report finals at the old rates, so it is set aside and the finals start again."""
    for params in dirs.finals_runs.glob("*/params.json"):
        try:
            spec = TrialSpec.of(json.loads(params.read_text()))
        except (ValueError, KeyError):
            continue  # a trial folder Tune was still writing: its snapshot decides
        if any(best.get(m.cell) and m.lr != best[m.cell]["lr"] for m in spec.members):
            return True
    return False


def kept_finals(dirs: ExperimentDirs, best: dict[str, Any]) -> list[dict]:
    """Rows of the newest set-aside finals whose cell still has the same best rate: those runs
    would train exactly the same again (same seeds, systems and rate), so only the cells whose
    rate changed are retrained. Recomputed from the files on every run, so a redo that is
    interrupted resumes with the same split."""
    n = 1
    while _stale_finals(dirs, n + 1).exists():
        n += 1
    rows_file = _stale_finals(dirs, n) / dirs.finals.name
    if not rows_file.exists():
        return []
    return [r for r in read_json(rows_file, "restore it or delete it (those finals are then "
                                 "retrained)") if r["lr"] == best[r["cell"]]["lr"]]


def finals_plan(exp: Experiment, dirs: ExperimentDirs, name: str, seeds: dict[str, list[int]]
                ) -> StagePlan:
    """The plan of a finals run: which cells' seeds share a program, and the GPU share."""
    return stage_plan(exp, dirs, name, list(seeds), max(map(len, seeds.values())))


def final_specs(exp: Experiment, best: dict[str, Any], dirs: ExperimentDirs, plan: StagePlan,
                seeds: dict[str, list[int]]) -> list[dict]:
    """One trial spec per program of ``plan``: each of its cells' ``seeds`` at the cell's best
    learning rate, all in one vmapped program (``tuner.service.trials.train_finals_trial``)."""
    cells = exp.cells()
    return [shared_final_spec([(c, best[c]["lr"], s) for c in program for s in seeds[c]],
                              {c: cells[c] for c in program}, worker(exp, dirs, plan.gpu_share))
            for program in plan.groups]


def _final_trial(config: dict[str, Any], base) -> None:
    train_finals_trial(config, base)


def final_rows(config: dict[str, Any], metrics: dict[str, Any], error: Any) -> list[dict]:
    """One row per seed of a finals trial (its Tune ``config``): cell, seed, lr, grid values
    and its own metrics."""
    spec, rows = TrialSpec.of(config), []
    for i, m in enumerate(spec.members):
        own = part(metrics, spec.prefix(i))
        rows.append({"cell": m.cell, "seed": m.seed, "lr": m.lr, **overrides(config, m.cell),
                     **{k: v for k, v in own.items()
                        if k.startswith("eval/") or k in ("train_loss", "step", "diverged",
                                                        "system_seed")},
                     "error": None if error is None else str(error)})
    return rows


def run_finals(exp: Experiment, dirs: ExperimentDirs, best: dict[str, Any],
               wandb: bool = True) -> list[dict]:
    """Stage 2. Returns one row per final run: cell, seed, lr and its final metrics."""
    if dirs.finals.exists():
        rows = read_json(dirs.finals, REMEDY[dirs.finals.name])
        if all(r["lr"] == best[r["cell"]]["lr"] for r in rows):
            return _add_seeds(exp, dirs, best, rows, wandb)
        set_aside_stale_finals(dirs)  # widened or re-searched after these finals ran
    elif interrupted_at_other_rates(dirs, best):
        set_aside_stale_finals(dirs)  # interrupted, then re-searched: not to be resumed
    kept = kept_finals(dirs, best)
    skip = sorted({r["cell"] for r in kept})
    if skip:
        print(f"finals kept (best rate unchanged): {', '.join(skip)}", flush=True)
    path = dirs.finals_runs
    ray_fixes.tolerate_deleted_checkpoints()
    todo = {c: list(exp.finals.seeds) for c in exp.cells() if c not in skip}
    plan = finals_plan(exp, dirs, "finals", todo)
    finals_trainable = trainable(exp, _final_trial, plan.gpu_share)
    if tune.Tuner.can_restore(path):
        print(f"resuming the finals from {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), finals_trainable, resume_errored=True)
    else:
        status = StatusFile(dirs.status, "finals", [c for c in exp.cells() if c not in skip], 1,
                            exp.objective)
        tuner = tune.Tuner(
            finals_trainable,
            param_space={"final": tune.grid_search(final_specs(exp, best, dirs, plan, todo))},
            tune_config=tune.TuneConfig(max_concurrent_trials=slots(plan,
                                                                    exp.search.max_concurrent),
                                        reuse_actors=reuse_actors()),
            run_config=_run_config(exp, dirs, "finals", status, wandb))
    results = tuner.fit()
    raise_member_too_large(results)
    if results.num_terminated + results.num_errors < len(results):
        raise Interrupted("finals", f"{len(results) - results.num_terminated - results.num_errors}"
                          " trial(s) not ended")
    rows = kept + [row for r in results
                   for row in final_rows(r.config, r.metrics or {}, r.error)]
    unfinished = [(x["cell"], x["seed"]) for x in rows
                  if x["error"] or not (x.get("diverged") or x.get("step") == exp.max_t)]
    missing = set(exp.cells()) - {x["cell"] for x in rows}
    if unfinished or missing:
        raise Interrupted("finals", f"runs not finished: {unfinished + sorted(missing)}")
    _write_json(dirs.finals, rows)
    return _add_seeds(exp, dirs, best, rows, wandb)  # kept cells may lack seeds added since


def _add_seeds(exp: Experiment, dirs: ExperimentDirs, best: dict[str, Any], rows: list[dict],
               wandb: bool) -> list[dict]:
    """Finals of seeds the file gained after the finals ran (``tuner.service.seed_growth``):
    only those train, in their own Tune run; their rows join ``finals.json``, the old rows
    kept as they were."""
    done = {(r["cell"], r["seed"]) for r in rows}
    todo = {c: [s for s in exp.finals.seeds if (c, s) not in done] for c in exp.cells()}
    todo = {c: seeds for c, seeds in todo.items() if seeds}
    if not todo:
        return rows
    path = dirs.added_seeds_runs(sorted({s for seeds in todo.values() for s in seeds}))
    name = path.name
    print(f"finals of the added seeds -> {path}", flush=True)
    ray_fixes.tolerate_deleted_checkpoints()
    plan = finals_plan(exp, dirs, name, todo)
    finals_trainable = trainable(exp, _final_trial, plan.gpu_share)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(str(path), finals_trainable, resume_errored=True)
    else:
        specs = final_specs(exp, best, dirs, plan, todo)
        status = StatusFile(dirs.status, "finals", list(todo), 1, exp.objective)
        tuner = tune.Tuner(
            finals_trainable, param_space={"final": tune.grid_search(specs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=slots(plan,
                                                                    exp.search.max_concurrent),
                                        reuse_actors=True),
            run_config=_run_config(exp, dirs, name, status, wandb))
    results = tuner.fit()
    raise_member_too_large(results)
    if results.num_terminated + results.num_errors < len(results):
        raise Interrupted(name, f"{len(results) - results.num_terminated - results.num_errors}"
                          " trial(s) not ended")
    new = [row for r in results for row in final_rows(r.config, r.metrics or {}, r.error)]
    unfinished = [(x["cell"], x["seed"]) for x in new
                  if x["error"] or not (x.get("diverged") or x.get("step") == exp.max_t)]
    if unfinished or {(c, s) for c, seeds in todo.items() for s in seeds} - {
            (x["cell"], x["seed"]) for x in new}:
        raise Interrupted(name, f"runs not finished: {unfinished or 'some seeds have no row'}")
    rows = rows + new
    _write_json(dirs.finals, rows)
    return rows
