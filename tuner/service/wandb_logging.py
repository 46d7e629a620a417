"""Weights & Biases: one run per member of a trial (a searched rate, or a final seed), so
W&B's own views (runs table with ``lr`` as a column, ``eval/nmse`` against ``lr``, parallel
coordinates, group by cell) compare rates as they do for a sweep. Offline unless a key and the
network are there, runs written under the experiment folder (ready for ``wandb sync``). The API
key is never printed or logged.

What a user sees per experiment (project from the file's ``wandb.project``):

* group = the experiment's name; one run per member: a one-rate search trial's run (id: the
  Tune trial id), each member of a population and each seed of a cell's finals (ids from a
  per-folder prefix and the member's round, cell and Optuna number or seed, so a population
  handed to a new Tune trial after a kill continues the same runs);
* ``job_type`` = the cell, tags ``cell:<cell>``, ``stage:<stage>``, ``wave:<w>`` or
  ``seed:<s>``; config: ``experiment``, ``round``, ``stage``, ``cell``, the cell's grid
  coordinates (``model.patch_size``, ...), ``lr``, ``wave``, ``number`` (the Optuna trial),
  ``source`` (where the search proposed the rate), ``seed``, ``tune_trial_id``,
  ``trial_log_path``;
* history: the member's own metrics under the plain names (``eval/nmse``, ``train_loss``,
  ..., ``step`` the training step, charted against it), W&B's step = the trial's
  ``training_iteration``, ending where the member stopped; summary ``state``: complete,
  pruned, diverged or failed;
* a population's or a finals trial's program run (id: the Tune trial id, ``job_type``
  ``program``): step time and members alive, nothing per rate.

Kept from Ray 2.60's ``WandbLoggerCallback`` (subclassed): its setup (API key, project,
offline mode through ``WANDB_MODE``), its hooks and run kwargs, its result cleaning
(``_clean_log``) and filtering (``_WandbLoggingActor._handle_result``), and a logging actor
pinned to the driver's node. Departures, and why:

* Ray logs one run per Tune trial, named by the trial: a population trial would be one run of
  many rates. Here each result is split into its members' rows (``tuner.service.members``), and
  each member's run starts, logs and finishes on its own (a member stopped at a rung finishes
  there).
* Ray starts two actors per trial (a queue and a logger, each a fresh Python process importing
  wandb and spawning its own wandb service): most of a small experiment's wall time on a 2-core
  machine (bench/README.md). Here every run lives in one long-lived actor (wandb allows several
  runs in one process with ``reinit="create_new"``); calls to it are fire-and-forget, in order.
* Ray's runs record the logging process's system metrics, host metadata and console; here
  they are off (they would describe the logging actor, not the member's trial, once per
  member, and they cost most of a run's start).
* Replay after a kill: a driver killed outright takes with it whatever the actor had not
  written. Tune's ``result.json`` does hold it, so a trial's first result in a driver carries
  the trial's earlier rows from that file, and a trial that had ended under the killed driver
  without its runs marked written (``LOGGED_MARKER`` in the trial's folder, written once the
  actor has finished every run of the trial) is logged again from it at the new driver's first
  step, or at its end where Tune restarts it and it ends with no new result, or at the
  experiment's end where Tune takes no step (every trial had ended: a kill while the last
  runs were being written). A resumed
  offline run starts a new folder at step 0: it logs only the steps past those its earlier
  folders hold (read from their files, ``tuner.service.wandb_records``), and a run one of them
  ended (its summary's ``state``) is not reopened, so ``wandb sync`` of the folder gives each
  member one run, every step once.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

import ray
from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.wandb import WandbLoggerCallback, _clean_log, _WandbLoggingActor
from ray.air.util.node import _force_on_current_node

from tuner.service import relocate
from tuner.service.members import MemberOf, max_step, member_rows, member_state, members_of
from tuner.service.members import result_rows as earlier_rows
from tuner.service.trial_spec import TrialSpec
from tuner.service.wandb_records import STATE_KEY, fragments

FINISH_TIMEOUT_S = 300  # experiment end waits this long for runs to be written
LOGGED_MARKER = "wandb_logged.json"  # in a trial's folder: its W&B runs are finished and written
ID_PREFIX_FILE = "run_id_prefix"  # in the W&B folder: this experiment folder's run-id prefix
PROGRAM_KEYS = ("step", "time_this_iter_s", "time_total_s")  # a program run's own history
_ENDED = ("TERMINATED", "ERROR")  # Tune's states of a trial that has ended
_KEEP_INIT = ("project", "group", "dir", "entity", "mode", "notes", "allow_val_change")


def _has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _online(host: str = "api.wandb.ai", timeout_s: float = 2.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def choose_mode() -> str:
    """``WANDB_MODE`` if the user set it; else online only with a key and a reachable server."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_key() and _online() else "offline"


class _Filter:
    """What Ray's result filter (``_WandbLoggingActor._handle_result``) reads."""

    def __init__(self, exclude: list[str]) -> None:
        self._exclude, self._to_config = set(exclude), set()


class WandbRuns:
    """Actor holding every W&B run of an experiment; methods run in call order (one thread).

    Entries (see :meth:`CellWandbCallback._entries`) name a run by its ``init`` kwargs (so a
    restarted actor, or a new driver's, rebuilds it: W&B resumes the same id), the W&B step,
    what to log there (None: nothing) and the member's end state (None while it runs).
    """

    def __init__(self) -> None:
        os.environ["WANDB_START_METHOD"] = "thread"
        import wandb

        self._wandb = wandb
        self._runs: dict[str, Any] = {}  # run id -> open run
        self._last: dict[str, int] = {}  # run id -> last W&B step it holds (any fragment)
        self._ended: set[str] = set()  # finished here or in an earlier fragment
        self._of_trial: dict[str, list[str]] = {}  # Tune trial id -> its runs

    def log(self, trial_id: str, entries: list[dict[str, Any]]) -> None:
        """Logs ``entries`` of one trial, in order; a step a run already holds is skipped."""
        for e in entries:
            run_id = e["init"]["id"]
            ids = self._of_trial.setdefault(trial_id, [])
            if run_id not in ids:
                ids.append(run_id)
            if run_id in self._ended:
                continue
            if run_id not in self._last:  # first sight here: what earlier folders hold
                held = fragments(Path(e["init"]["dir"]) / "wandb", run_id)
                self._last[run_id] = held.last_step
                if held.finished:
                    self._ended.add(run_id)
                    continue
            new = e["log"] is not None and e["step"] > self._last[run_id]
            if run_id not in self._runs and not (new or e["state"]):
                continue  # nothing that an earlier folder lacks: no new folder for it
            run = self._runs.get(run_id)
            if run is None:
                run = self._open(e["init"])
                new = e["log"] is not None and e["step"] > self._last[run_id]  # online: resumed
            if new:
                run.log(e["log"], step=e["step"])
                self._last[run_id] = e["step"]
            if e["state"]:
                run.summary[STATE_KEY] = e["state"]
                self._finish(run_id)

    def _open(self, init: dict[str, Any]) -> Any:
        # no system metrics, host/git metadata, console capture or requirements file per run:
        # they would describe this logging process, not the member's trial, once per member,
        # and cost the most of a run's start (8 runs: 2.3-3.9 s with them, 0.3 s without)
        lean = self._wandb.Settings(x_disable_stats=True, x_disable_meta=True, console="off",
                                    x_save_requirements=False, disable_git=True)
        run = self._wandb.init(**{**init, "reinit": "create_new", "resume": "allow",
                                  "settings": lean})
        for pattern in ("eval/*", "train_loss", "grad_norm", "lr_now", "diag/*",
                        "members_alive", "time_this_iter_s"):
            run.define_metric(pattern, step_metric="step")  # charted against training steps
        # online, a resumed run is past the steps the server holds
        self._last[init["id"]] = max(self._last.get(init["id"], -1), run.step - 1)
        self._runs[init["id"]] = run
        return run

    def _finish(self, run_id: str) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run.finish()
        self._ended.add(run_id)

    def finish(self, trial_id: str, logdir: str) -> None:
        """Finishes the trial's runs still open, then marks them written (``LOGGED_MARKER``
        in the trial's folder)."""
        ids = self._of_trial.pop(trial_id, [])
        for run_id in ids:
            self._finish(run_id)
        marker = Path(logdir) / LOGGED_MARKER
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runs": ids}))
        os.replace(tmp, marker)

    def close(self) -> None:
        """Stops this process's wandb service once every run is finished (before Ray kills
        the actor, so nothing is cut off mid-write)."""
        for run_id in list(self._runs):
            self._finish(run_id)
        self._wandb.teardown()


def earlier_results(path: Path, before: int) -> list[dict[str, Any]]:
    """The rows of a trial's ``result.json`` before iteration ``before``, one per iteration
    (the last written), oldest first; a line cut by a kill is skipped."""
    return [] if before <= 1 else earlier_rows(path, before)


def id_prefix(wandb_dir: Path) -> str:
    """This experiment folder's run-id prefix (random, kept in the folder): member runs' ids
    are unique in the project, and the same for every driver of the folder."""
    path = wandb_dir / ID_PREFIX_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(4))
    return path.read_text().strip()


def member_run_id(prefix: str, round_name: str, member: MemberOf) -> str:
    """The W&B id of a population member's or final seed's run: its round, cell and Optuna
    number or seed (W&B ids allow no ``/\\#?%:``; ``-`` would break offline folder names)."""
    who = f"{round_name}|{member.cell}|{member.number}|{member.seed}"
    return f"{prefix}_{hashlib.sha1(who.encode()).hexdigest()[:12]}"


class CellWandbCallback(WandbLoggerCallback):
    """WandbLoggerCallback logging one run per member (module docstring) through one logging
    actor. Hooks: Tune calls ``log_trial_start`` / ``log_trial_result`` / ``log_trial_end``
    from its loop, ``on_step_begin`` every step and ``on_experiment_end`` once. Tune never
    waits on W&B except at the experiment's end, where every run is finished and written.
    """

    def __init__(self, *args, max_t: int | None = None, **kwargs) -> None:
        """Ray's arguments; ``max_t`` the search's full budget (a one-rate trial that ends
        short of it was stopped: pruned). Ray's own ``**kwargs`` go to ``wandb.init``."""
        super().__init__(*args, **kwargs)
        self._max_t = max_t

    def setup(self, *args, **kwargs) -> None:
        super().setup(*args, **kwargs)
        self._runs_actor = None
        self._finishing: list = []
        self._init: dict[str, dict[str, Any]] = {}  # trial id -> Ray's run kwargs
        self._exclude: dict[str, list[str]] = {}
        self._open: dict[str, dict[str, tuple[MemberOf, dict, dict]]] = {}
        self._seen: set[str] = set()  # trials that reported to this driver
        self._replayed = False  # ended trials checked for unwritten runs (on_step_begin)
        self._prefix = id_prefix(Path(self.kwargs["dir"]))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # an actor handle must not land in Tune's snapshots
        state["_runs_actor"], state["_finishing"] = None, []
        state["_init"], state["_exclude"], state["_open"] = {}, {}, {}
        state["_seen"] = set()  # per driver: a restored driver replays (log_trial_result)
        state["_replayed"] = False  # and checks the trials that had ended (on_step_begin)
        return state

    def __setstate__(self, state: dict) -> None:
        # a moved or copied folder logs into its own W&B directory (tuner.service.relocate)
        self.__dict__.update(state, kwargs=relocate.repoint(state["kwargs"]))
        # pickled before the full budget was kept: a trial's own config gives it (max_step)
        self.__dict__.setdefault("_max_t", None)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        """At a driver's first step: the trials that had ended under an earlier driver
        without their runs marked written are logged again (:meth:`_replay_ended`)."""
        if getattr(self, "_replayed", True):
            return
        self._replayed = True
        self._replay_ended(trials)

    def _replay_ended(self, trials: list) -> None:
        """Logs every ended trial this driver has not seen and whose runs are not marked
        written (``LOGGED_MARKER``) again from its ``result.json``; the actor skips what the
        run's earlier folders hold, so a trial replayed by several drivers gets each step
        once. Trials this driver saw are left to their own ``log_trial_end``."""
        for trial in trials:
            if trial.trial_id in self._seen or trial.status not in _ENDED \
                    or (Path(trial.path) / LOGGED_MARKER).exists():
                continue
            rows = earlier_rows(Path(trial.path) / "result.json")
            if not rows:
                continue
            self.log_trial_start(trial)
            self._seen.add(trial.trial_id)
            self._runs_actor.log.remote(trial.trial_id, self._entries(trial, rows))
            self.log_trial_end(trial, failed=trial.status == "ERROR")

    def _start_logging_actor(self, trial, exclude_results: list[str], **init_kwargs) -> None:
        """Ray's per-trial actor start: here, the one actor (started once) and the trial's
        run kwargs kept for its members' runs."""
        if trial in self._trial_logging_actors:
            return
        if self._runs_actor is None:
            env = {k: os.environ[k] for k in ("WANDB_API_KEY", "WANDB_MODE") if k in os.environ}
            self._runs_actor = ray.remote(
                num_cpus=0, max_restarts=-1, max_task_retries=-1, **_force_on_current_node(),
                runtime_env={"env_vars": env})(WandbRuns).remote()
        self._init[trial.trial_id] = {k: v for k, v in init_kwargs.items() if k in _KEEP_INIT}
        self._exclude[trial.trial_id] = list(exclude_results)
        self._trial_logging_actors[trial] = self._runs_actor

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        """Sends the result's member rows; a trial's first result in this driver also sends
        its earlier results from Tune's result.json (a resumed trial: module docstring)."""
        if trial not in self._trial_logging_actors:
            self.log_trial_start(trial)
        rows = [result]
        if trial.trial_id not in self._seen:
            self._seen.add(trial.trial_id)
            rows = earlier_results(Path(trial.local_path) / "result.json",
                                   result.get(TRAINING_ITERATION, 0)) + rows
        self._runs_actor.log.remote(trial.trial_id, self._entries(trial, rows))

    def _entries(self, trial, rows: list[dict[str, Any]], ended: bool = False,
                 failed: bool = False) -> list[dict[str, Any]]:
        """The actor's entries for ``rows`` of a trial: per row, each member evaluated there
        (its run's init, W&B step, its own metrics, its state), then the program's (a
        population's or finals'). ``ended``: the trial ended; members still open then end
        (no rows: only their states)."""
        config = trial.config
        members = members_of(config)
        budget = max_step(config) or self._max_t
        round_name = Path(trial.path).parent.name
        open_ = self._open.setdefault(trial.trial_id, {})
        filt = _Filter(self._exclude.get(trial.trial_id, []))
        out = []
        for row in rows:
            row = _clean_log(row, video_kwargs=self.video_kwargs, image_kwargs=self.image_kwargs)
            step = row.get(TRAINING_ITERATION)
            alive = 0
            for m in members:
                own = member_rows(m, [row])
                if not own:
                    continue
                init = self._member_init(trial, m, round_name)
                state = member_state(m, own[-1], budget)
                log, _ = _WandbLoggingActor._handle_result(filt, own[-1])
                out.append({"init": init, "step": step, "log": log, "state": state})
                alive += state is None
                if state is None:
                    open_[init["id"]] = (m, init, own[-1])
                else:
                    open_.pop(init["id"], None)
            if members and members[0].prefix:
                program = {k: row[k] for k in PROGRAM_KEYS if k in row}
                out.append({"init": self._program_init(trial, round_name), "step": step,
                            "log": {**program, "members_alive": alive}, "state": None})
        if ended:
            for m, init, last in list(open_.values()):
                out.append({"init": init, "step": -1, "log": None,
                            "state": member_state(m, last, budget, ended=True, failed=failed)})
            open_.clear()
        return out

    def _member_init(self, trial, m: MemberOf, round_name: str) -> dict[str, Any]:
        base = self._init[trial.trial_id]
        config = {"experiment": base.get("group"), "round": round_name, "stage": m.stage,
                  "cell": m.cell, **m.coords, "lr": m.lr, "wave": m.wave, "number": m.number,
                  "source": m.source or None, "seed": m.seed, "tune_trial_id": trial.trial_id,
                  "trial_log_path": trial.path}
        tags = [f"cell:{m.cell}", f"stage:{m.stage}",
                *([f"wave:{m.wave}"] if m.wave is not None else []),
                *([f"seed:{m.seed}"] if m.seed is not None else [])]
        run_id = (member_run_id(self._prefix, round_name, m) if m.prefix else trial.trial_id)
        return {**base, "id": run_id, "name": m.label, "job_type": m.cell[:64],
                "tags": [t[:64] for t in tags],
                "config": {k: v for k, v in config.items() if v is not None}}

    def _program_init(self, trial, round_name: str) -> dict[str, Any]:
        spec = TrialSpec.of(trial.config)
        what = (f"wave {spec.wave}" if spec.wave is not None
                else "seeds " + ",".join(map(str, spec.seeds)))
        config = {"experiment": self._init[trial.trial_id].get("group"), "round": round_name,
                  "stage": spec.stage, "wave": spec.wave, "cells": list(spec.cells),
                  "members": len(spec.seeds) or len(spec.members),
                  "tune_trial_id": trial.trial_id, "trial_log_path": trial.path}
        return {**self._init[trial.trial_id], "id": trial.trial_id,
                "name": f"{spec.stage} {','.join(spec.cells)} {what}"[:128],
                "job_type": "program", "tags": ["program", f"stage:{spec.stage}"],
                "config": {k: v for k, v in config.items() if v is not None}}

    def __del__(self) -> None:
        """Nothing to stop at garbage collection: the runs actor is closed at the experiment's
        end, and on an interrupt it ends with the driver (offline run files stay). Ray's own
        ``__del__`` signals per-trial queues this class never creates, and raised at exit."""

    def log_trial_save(self, trial) -> None:
        """Checkpoints are not uploaded (``upload_checkpoints`` stays off)."""

    def log_trial_end(self, trial, failed: bool = False) -> None:
        """Ends the trial's members still open (their state from how the trial ended), then
        has the actor finish the trial's runs and mark them written."""
        actor = self._trial_logging_actors.pop(trial, None)
        if actor is None:
            return
        if trial.trial_id not in self._seen:
            # restarted by this driver and ended with no new result (a population whose
            # members had all ended at its last checkpoint): its rows are in result.json only
            self._seen.add(trial.trial_id)
            rows = earlier_rows(Path(trial.path) / "result.json")
            if rows:
                actor.log.remote(trial.trial_id, self._entries(trial, rows))
        ends = self._entries(trial, [], ended=True, failed=failed)
        if ends:
            actor.log.remote(trial.trial_id, ends)
        self._finishing.append(actor.finish.remote(trial.trial_id, str(trial.path)))

    def on_experiment_end(self, trials, **info) -> None:
        """Replays the ended trials not yet written, then waits for every run to be written.
        A restored run whose trials had all ended (a kill during this wait, after Tune's last
        snapshot) takes no step, so its replay happens here."""
        self._replay_ended(trials)
        if self._runs_actor is not None:
            self._finishing.append(self._runs_actor.close.remote())
            ray.wait(self._finishing, num_returns=len(self._finishing),
                     timeout=FINISH_TIMEOUT_S)
        self._finishing = []
        # past the wait the stage counts as done and is not rerun: no later driver replays
        late = sorted(t.trial_id for t in trials if t.trial_id in self._seen
                      and t.status in _ENDED and not (Path(t.path) / LOGGED_MARKER).exists())
        if late:
            print(f"warning: W&B runs of {len(late)} trial(s) not written within "
                  f"{FINISH_TIMEOUT_S} s ({', '.join(late[:5])}{', ...' if len(late) > 5 else ''}"
                  f"): those runs may lack their last steps; every result is kept in the "
                  f"trial's result.json", file=sys.stderr, flush=True)


def make_callback(project: str, group: str, directory: Path,
                  max_t: int | None = None) -> CellWandbCallback:
    """The experiment's callback: runs in ``directory``, grouped by ``group``; ``max_t`` the
    search's full budget (a one-rate trial that ends short of it was stopped: pruned)."""
    directory.mkdir(parents=True, exist_ok=True)
    return CellWandbCallback(project=project, group=group, dir=str(directory),
                             excludes=["error"], max_t=max_t)

