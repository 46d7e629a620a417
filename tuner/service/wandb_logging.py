"""Weights & Biases through Ray's WandbLoggerCallback: offline unless a key and the network are
there, runs written under the experiment folder (ready for ``wandb sync``), tagged by cell,
stage and seed. The API key is never printed or logged.

Ray 2.60's callback starts two actors per trial (a queue and a logger, each a fresh Python
process importing wandb and spawning its own wandb service): most of a small experiment's wall
time on a 2-core machine (bench/README.md). Here every run of the experiment lives in one
long-lived actor (wandb allows several runs in one process with ``reinit="create_new"``); the
callback keeps Ray's run naming, grouping, config cleaning and result filtering by reusing its
own pieces.

Calls to the actor are fire-and-forget, so a driver killed outright (SIGKILL, a lost node)
takes with it whatever the actor had not yet written: a fresh actor spends seconds importing
wandb and starting its service, so a trial's first results may not even have a run yet. Tune's
``result.json`` does hold them, so a trial's first result in a driver carries the trial's
earlier rows from that file, and a run resumed there logs those it lacks before the new one.
A trial that had ended under the killed driver reports nothing to the new one: its run is
marked written (``LOGGED_MARKER`` in the trial's folder) only once the actor has finished it,
so a new driver replays every ended trial without that mark from its ``result.json``.
"""

from __future__ import annotations

import json
import netrc
import os
import socket
import types
from pathlib import Path
from typing import Any

import ray
from ray.air.constants import TRAINING_ITERATION
from ray.air.integrations.wandb import WandbLoggerCallback, _clean_log, _WandbLoggingActor
from ray.air.util.node import _force_on_current_node

from tuner.service.trial_spec import TrialSpec

FINISH_TIMEOUT_S = 300  # experiment end waits this long for runs to be written
LOGGED_MARKER = "wandb_logged.json"  # in a trial's folder: its W&B run is finished and written


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


class WandbRuns:
    """Actor holding every W&B run of an experiment; methods run in call order (one thread)."""

    def __init__(self) -> None:
        os.environ["WANDB_START_METHOD"] = "thread"
        import wandb

        self._wandb = wandb
        self._runs: dict[str, tuple[Any, types.SimpleNamespace]] = {}

    def start(self, trial_id: str, logdir: str, exclude: list[str], to_config: list[str],
              init_kwargs: dict[str, Any]) -> None:
        if trial_id in self._runs:  # a restored trial keeps its run
            return
        run = self._wandb.init(**{**init_kwargs, "reinit": "create_new"})
        run.config.update({"trial_log_path": logdir}, allow_val_change=True)
        # Ray's own result filter reads only these two attributes; logdir: where the mark goes
        self._runs[trial_id] = (run, types.SimpleNamespace(_exclude=set(exclude),
                                                           _to_config=set(to_config),
                                                           logdir=logdir))

    def log(self, trial_id: str, result: dict[str, Any], start_args: tuple,
            earlier: list[dict[str, Any]] | None = None) -> None:
        """Logs one result, after ``earlier`` ones of the trial (see
        :meth:`CellWandbCallback.log_trial_result`) that the run has not yet (those at or past
        ``run.step``: a resumed online run is past the steps it already holds; an offline one
        starts at 0 and ``wandb sync`` drops steps the run already has). ``start_args`` (those
        of :meth:`start`) rebuild the run where this actor lost it (Ray restarted the actor):
        W&B resumes the same run id."""
        if trial_id not in self._runs:
            self.start(trial_id, *start_args)
        run, filt = self._runs[trial_id]
        if earlier:
            first = run.step
            for row in earlier:
                if row[TRAINING_ITERATION] >= first:
                    self._log(run, filt, row)
        self._log(run, filt, result)

    @staticmethod
    def _log(run, filt, result: dict[str, Any]) -> None:
        log, config_update = _WandbLoggingActor._handle_result(filt, result)
        run.config.update(config_update, allow_val_change=True)
        run.log(log, step=log.get(TRAINING_ITERATION))

    def finish(self, trial_id: str) -> None:
        """Finishes the trial's run, then marks it written (``LOGGED_MARKER``)."""
        entry = self._runs.pop(trial_id, None)
        if entry is not None:
            run, filt = entry
            last = run.step
            run.finish()
            marker = Path(filt.logdir) / LOGGED_MARKER
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"run_id": trial_id, "next_step": last}))
            os.replace(tmp, marker)

    def close(self) -> None:
        """Stops this process's wandb service once every run is finished (before Ray kills
        the actor, so nothing is cut off mid-write)."""
        for trial_id in list(self._runs):
            self.finish(trial_id)
        self._wandb.teardown()


def earlier_results(path: Path, before: int) -> list[dict[str, Any]]:
    """The rows of a trial's ``result.json`` (Tune's own record, one JSON line per result)
    before iteration ``before``, one per iteration (the last written), oldest first; a line cut
    by a kill is skipped."""
    if before <= 1 or not path.exists():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        it = row.get(TRAINING_ITERATION) if isinstance(row, dict) else None
        if isinstance(it, int) and it < before:
            rows[it] = row
    return [rows[i] for i in sorted(rows)]


class CellWandbCallback(WandbLoggerCallback):
    """WandbLoggerCallback whose runs carry the trial's cell, stage and seed as tags, and share
    one logging actor (see the module docstring). Hooks: Tune calls ``log_trial_start`` /
    ``log_trial_result`` / ``log_trial_end`` from its loop and ``on_experiment_end`` once.
    Calls to the actor are fire-and-forget (Ray keeps their order), so Tune never waits on W&B
    except at the experiment's end, where every run is finished and written.
    """

    def setup(self, *args, **kwargs) -> None:
        super().setup(*args, **kwargs)
        self._runs_actor = None
        self._finishing: list = []
        self._start_args: dict[str, tuple] = {}
        self._seen: set[str] = set()  # trials that reported to this driver
        self._replayed = False  # ended trials checked for unwritten runs (on_step_begin)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # an actor handle must not land in Tune's snapshots
        state["_runs_actor"], state["_finishing"], state["_start_args"] = None, [], {}
        state["_seen"] = set()  # per driver: a restored driver replays (log_trial_result)
        state["_replayed"] = False  # and checks the trials that had ended (on_step_begin)
        return state

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        """At a driver's first step: every trial that had ended under an earlier driver
        without its run marked written is logged again from its ``result.json``."""
        if getattr(self, "_replayed", True):
            return
        self._replayed = True
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR") or \
                    (Path(trial.path) / LOGGED_MARKER).exists():
                continue
            rows = earlier_results(Path(trial.path) / "result.json", 2**62)
            if not rows:
                continue
            self.log_trial_start(trial)
            self._seen.add(trial.trial_id)
            self._runs_actor.log.remote(trial.trial_id, self._clean(rows[-1]),
                                        self._start_args[trial.trial_id],
                                        [self._clean(r) for r in rows[:-1]])
            self.log_trial_end(trial)

    def log_trial_start(self, trial) -> None:
        spec = TrialSpec.of(trial.config)
        self.kwargs["tags"] = [*(f"cell:{c}" for c in spec.cells), f"stage:{spec.stage}",
                               *(f"seed:{s}" for s in spec.seeds)]  # finals: a cell's
        super().log_trial_start(trial)

    def _start_logging_actor(self, trial, exclude_results: list[str], **init_kwargs) -> None:
        if trial in self._trial_logging_actors:
            return
        # a resumed trial (driver restart, node loss) continues its own run, same id
        init_kwargs = {**init_kwargs, "resume": "allow"}
        if self._runs_actor is None:
            env = {k: os.environ[k] for k in ("WANDB_API_KEY", "WANDB_MODE") if k in os.environ}
            self._runs_actor = ray.remote(
                num_cpus=0, max_restarts=-1, max_task_retries=-1, **_force_on_current_node(),
                runtime_env={"env_vars": env})(WandbRuns).remote()
        # the trial's folder in the experiment (Ray's own callback names the driver's staging
        # copy under /tmp/ray, which a new driver does not have): the run's trial_log_path, and
        # where the run's written mark goes
        args = (trial.path, exclude_results, self.AUTO_CONFIG_KEYS, init_kwargs)
        self._start_args[trial.trial_id] = args
        self._runs_actor.start.remote(trial.trial_id, *args)
        self._trial_logging_actors[trial] = self._runs_actor

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        """Sends the result; a trial's first result in this driver also sends its earlier
        results from Tune's result.json (a resumed trial: see the module docstring)."""
        if trial not in self._trial_logging_actors:
            self.log_trial_start(trial)
        earlier = None
        if trial.trial_id not in self._seen:
            self._seen.add(trial.trial_id)
            earlier = [self._clean(r) for r in earlier_results(
                Path(trial.local_path) / "result.json", result.get(TRAINING_ITERATION, 0))]
        self._runs_actor.log.remote(trial.trial_id, self._clean(result),
                                    self._start_args[trial.trial_id], earlier)

    def _clean(self, result: dict) -> dict:
        return _clean_log(result, video_kwargs=self.video_kwargs, image_kwargs=self.image_kwargs)

    def __del__(self) -> None:
        """Nothing to stop at garbage collection: the runs actor is closed at the experiment's
        end, and on an interrupt it ends with the driver (offline run files stay). Ray's own
        ``__del__`` signals per-trial queues this class never creates, and raised at exit."""

    def log_trial_save(self, trial) -> None:
        """Checkpoints are not uploaded (``upload_checkpoints`` stays off)."""

    def log_trial_end(self, trial, failed: bool = False) -> None:
        actor = self._trial_logging_actors.pop(trial, None)
        if actor is not None:
            self._finishing.append(actor.finish.remote(trial.trial_id))

    def on_experiment_end(self, trials, **info) -> None:
        if self._runs_actor is not None:
            self._finishing.append(self._runs_actor.close.remote())
            ray.wait(self._finishing, num_returns=len(self._finishing),
                     timeout=FINISH_TIMEOUT_S)
        self._finishing = []


def make_callback(project: str, group: str, directory: Path) -> CellWandbCallback:
    directory.mkdir(parents=True, exist_ok=True)
    return CellWandbCallback(project=project, group=group, dir=str(directory),
                             excludes=["error"])
