"""Run a whole experiment: per-cell LR search, seeded finals with rollouts, then the report.

    python -m tuner.run exp4            # the experiment in search_spaces/exp4.yaml
    python -m tuner.run exp4 --smoke    # tiny model and budget: the full pipeline in minutes
    python -m tuner.run path/to/my_experiment.yaml --address auto   # on a running cluster
    python -m tuner.run exp4 --research lambda=0.99,patch=8:1e-4:1e-3   # one cell, new range
    python -m tuner.run exp4 --pilot    # measure each model shape here, project the wall time

Rerunning the same command resumes an interrupted experiment: a finished stage is not rerun,
an unfinished one continues from Tune's snapshot (trials from their checkpoints). Everything
lands in ``<out>/<experiment name>/``; ``status.json`` there tracks progress live.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import tyro

from tuner.service import experiment, folder_check, ray_start, relocate, seed_growth
from tuner.service.dirs import ExperimentDirs
from tuner.service.files import DamagedFile, read_json, write_atomic
from tuner.service.folder_lock import FolderLock, FolderLocked
from tuner.service.search import rounds


@dataclasses.dataclass(frozen=True)
class Args:
    """Run (or resume) an experiment defined by a file in search_spaces/."""

    experiment: Annotated[str, tyro.conf.Positional]  # name in search_spaces/, or a YAML path
    smoke: bool = False  # apply the file's smoke profile (tiny model and budget)
    out: str = "experiments"  # experiments land in <out>/<name>[-smoke]/
    address: str | None = None  # Ray cluster to join ("auto": the running one); default:
    # $RAY_ADDRESS if set (as inside `ray job submit`), else a new local cluster
    num_cpus: int | None = None  # CPUs of the local cluster (default: all)
    # GPUs of the local cluster (default: those found); on a machine without any, logical GPUs
    # that exercise the stage plan's placement (trials see CUDA_VISIBLE_DEVICES, nothing more)
    num_gpus: int | None = None
    # port of the local cluster's dashboard, for a fixed SSH tunnel (default: 8265, or the next
    # free one); a port in use ends the run before it starts, with the remedy
    dashboard_port: int | None = None
    wandb: bool = True  # log to W&B (offline unless a key and the network are available)
    # re-search cells whose best LR is at an edge of the range (or where every trial diverged);
    # recorded in the experiment folder, and also widens a finished search
    widen_edges: bool = False
    # re-search cells over a new lr range, each CELL:LOW:HIGH (cell ids as in the report); the
    # other cells keep their trials and finals; recorded in the experiment folder
    research: tuple[str, ...] = ()
    # measure every distinct model shape on this cluster (step, compile, evaluation,
    # checkpoint, memory), print the projected wall time here and on N GPUs, write pilot.json
    # under the experiment folder, and stop; the real run then prints its times against it
    pilot: bool = False
    # JAX's compilation cache of the trials (default: <out>/<name>/jax_cache); experiments of
    # one model shape that name the same folder (e.g. on a cluster's shared disk) compile each
    # program once between them
    compile_cache: str | None = None


class UsageError(Exception):
    """Bad input found before any cluster work."""


def prepare(args: Args):
    """All that can fail on bad input, before Ray starts: load and validate. Writes nothing
    (the experiment file is frozen by :func:`freeze`, once the folder's lock is held: a
    driver refused by the lock must leave the folder as it was).

    Returns the experiment, its folders and the parsed ``--research`` rounds."""
    try:
        exp = experiment.load(args.experiment, smoke=args.smoke)
    except experiment.SearchSpaceError as e:
        raise UsageError(str(e)) from None
    try:
        research = [rounds.parse_research(r, list(exp.cells())) for r in args.research]
    except ValueError as e:
        raise UsageError(f"{exp.path}: {e}") from None
    dirs = ExperimentDirs(Path(args.out).absolute() / exp.name,
                          Path(args.compile_cache).absolute() if args.compile_cache else None)
    frozen = dirs.experiment_file
    if (frozen.exists() and frozen.read_text() != exp.path.read_text()
            and seed_growth.accepted(frozen, exp.path, args.smoke) is None):
        raise UsageError(
            f"{exp.path} changed since {dirs.root} was started (its copy is {frozen}); "
            "resuming would mix two experiments. The one change a started experiment "
            "takes is more finals seeds (finals.seeds grown, the old ones kept); restore "
            "the file, or use a new --out folder.")
    if not (args.address or os.environ.get("RAY_ADDRESS")):  # a local cluster is started
        try:
            ray_start.check_temp_path()
        except ray_start.RayStartFailed as e:
            raise UsageError(str(e)) from None
    return exp, dirs, research


def freeze(exp, dirs: ExperimentDirs, smoke: bool) -> None:
    """Keeps the experiment's file in its folder (``experiment.yaml``), or updates it to grown
    finals seeds (checked by :func:`prepare`); run with the folder's lock held."""
    frozen = dirs.experiment_file
    if not frozen.exists():
        write_atomic(frozen, exp.path.read_text())
    elif frozen.read_text() != exp.path.read_text():
        grown = seed_growth.accepted(frozen, exp.path, smoke)
        write_atomic(frozen, exp.path.read_text())
        print(f"{exp.path}: finals.seeds grew by {list(grown or ())}: only these seeds train "
              f"(on their own systems), the finals already run are kept and the report is "
              f"rewritten; {frozen} updated", flush=True)


def _start_ray(args: Args, wandb_mode: str):
    env = {"WANDB_MODE": wandb_mode, "WANDB_SILENT": "true"}
    # the driver too: WandbLoggerCallback.setup runs here and, online, demands an API key
    os.environ.update(env)
    address = args.address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    return ray_start.start(address, env, args.num_cpus, args.num_gpus, args.dashboard_port)


def _check_local_resources(exp) -> None:
    """A local cluster never grows: a trial it cannot place would wait forever."""
    import ray

    have = ray.cluster_resources()
    for key, need in (("CPU", exp.resources.cpus_per_trial), ("GPU", exp.resources.gpus_per_trial)):
        if need > have.get(key, 0):
            ray.shutdown()
            raise UsageError(f"{exp.path}: resources.{key.lower()}s_per_trial={need:g} but this "
                             f"machine's Ray cluster has {have.get(key, 0):g} {key}(s); use "
                             "--smoke, lower it, or run on a cluster (--address)")


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(args: Args) -> int:
    started = time.perf_counter()
    try:
        exp, dirs, research = prepare(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # one driver per folder (the pilot too: it writes pilot.json there, and a second cluster
    # on the machine would skew its measurements); taken before Ray starts, released on any
    # exit but SIGKILL, whose lock the next driver takes over (folder_lock). SIGTERM (a
    # scheduler's stop, `timeout`) is a clean stop from here on, so that one arriving while the
    # lock is taken still releases it.
    lock = FolderLock(dirs.root)
    signal.signal(signal.SIGTERM, _stop)
    try:
        try:
            dirs.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except FolderLocked as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        earlier, came_from = relocate.take(dirs.root)
        if came_from is not None:
            print(f"this folder moved (or was copied) from {came_from}; it resumes at "
                  f"{dirs.root} and writes nothing there", flush=True)
        freeze(exp, dirs, args.smoke)
        for message in folder_check.check(dirs):
            print(message, flush=True)
        # what Tune unpickles from the folder (searchers, callbacks) is re-pointed to here
        with relocate.moved(earlier, dirs.root):
            return _drive(args, exp, dirs, research, started)
    except DamagedFile as e:  # a journal or result file a crash or a full disk cut
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr, flush=True)
        return 130
    finally:
        lock.release()


def _drive(args: Args, exp, dirs: ExperimentDirs, research, started: float) -> int:
    """Starts Ray and runs the stages (or the pilot) in a folder this driver holds."""
    ray_start.environment_defaults()  # also set by tuner/run.py before Ray is imported
    # the driver only plans and groups cells (compiles for the CPU's memory estimate): on a GPU
    # node JAX would otherwise take 75% of a card the trials need
    import jax

    jax.config.update("jax_platforms", "cpu")
    from tuner.service.plan.stage import PlanError
    from tuner.service.report import render as report
    from tuner.service.search.searcher import PerCellSearcher  # noqa: F401  (fail fast if missing)
    from tuner.service.stages import Interrupted, SearchFailed, run_finals, run_search
    from tuner.service.wandb_logging import choose_mode

    mode = choose_mode() if args.wandb else "disabled"
    try:
        ctx = _start_ray(args, mode)
    except ray_start.RayStartFailed as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        try:
            _check_local_resources(exp)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"experiment {exp.name}: {len(exp.cells())} cells -> {dirs.root}", flush=True)
    print(f"Ray dashboard: {ctx.dashboard_url or '(not running)'} (token auth: see "
          "~/.ray/auth_token; through an SSH tunnel on a cluster)", flush=True)
    print(f"live status: {dirs.status}; W&B mode: {mode}"
          + (f" (sync later: wandb sync {dirs.wandb}/wandb/offline-run-*)"
             if mode == "offline" else ""), flush=True)
    # SIGTERM (a scheduler's stop, `timeout`) outside Tune's own handling: the same clean stop
    # as Ctrl+C instead of the native handler's stack dump; every result file is written
    # atomically and only when its stage finished, so stopping anywhere loses nothing
    signal.signal(signal.SIGTERM, _stop)
    if args.pilot:
        return _pilot(exp, dirs, time.perf_counter() - started)
    from tuner.service import ray_fixes

    ray_fixes.new_trials_where_the_run_is()  # a moved folder's new trials (ray_fixes)
    try:
        times = {"search_s": time.perf_counter()}
        best = run_search(exp, dirs, wandb=args.wandb, widen_edges=args.widen_edges,
                          research=research)
        times["finals_s"] = time.perf_counter()
        times["search_s"] = times["finals_s"] - times["search_s"]
        _write_times(dirs, times)
        finals = run_finals(exp, dirs, best, wandb=args.wandb)
        times["finals_s"] = time.perf_counter() - times["finals_s"]
        import pandas as pd

        summary = report.write(exp, dirs.root, best, finals,
                               pd.read_csv(dirs.search_trials))
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr, flush=True)
        return 130
    except SearchFailed as e:
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 1
    except PlanError as e:  # raised before a stage's first trial: nothing was lost
        print(f"\nerror: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"\nreport: {summary}")
    for line in report.verdict_lines(summary):
        print(line)
    times["total_s"] = time.perf_counter() - started
    _write_times(dirs, times)
    print(f"wall time: {times['total_s']:.0f} s")
    for line in _against_pilot(dirs, times):
        print(line)
    return 0


def _pilot(exp, dirs: ExperimentDirs, startup_s: float) -> int:
    from tuner.service.pilot.run import run_pilot, summary_lines

    try:
        pilot = run_pilot(exp, dirs, startup_s)
    except KeyboardInterrupt:
        print("\npilot interrupted; nothing of the experiment was touched", file=sys.stderr)
        return 130
    for line in summary_lines(pilot, exp):
        print(line)
    print(f"pilot: {dirs.pilot}")
    return 0


def _write_times(dirs: ExperimentDirs, times: dict[str, float]) -> None:
    """The stage times measured so far (this run's: a resumed stage counts from its resume),
    as ``times.json``; a stage still running has its start on the clock, not a duration."""
    import json

    done = {k: v for k, v in times.items()
            if k == "search_s" or (k == "finals_s" and "total_s" in times) or k == "total_s"}
    tmp = dirs.times.with_suffix(".tmp")
    tmp.write_text(json.dumps({**done, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    os.replace(tmp, dirs.times)


def _against_pilot(dirs: ExperimentDirs, times: dict[str, float]) -> list[str]:
    """This run's stage times against the pilot's projection (where a pilot ran)."""
    path = dirs.pilot
    if not path.exists():
        return []
    projected = read_json(path, folder_check.REMEDY[path.name])["projection"]["current"]
    return [f"  {key[:-2]}: {times[key]:.0f} s, the pilot projected {projected[key]:.0f} s "
            f"({times[key] / projected[key]:.2f}x)" for key in ("search_s", "finals_s", "total_s")]
