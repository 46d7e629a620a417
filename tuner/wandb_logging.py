"""Weights & Biases through Ray's WandbLoggerCallback: offline unless a key and the network are
there, runs written under the experiment folder (ready for ``wandb sync``), tagged by cell,
stage and seed. The API key is never printed or logged."""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path

from ray.air.integrations.wandb import WandbLoggerCallback, _clean_log, _QueueItem

from tuner.status import trial_spec


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


class CellWandbCallback(WandbLoggerCallback):
    """WandbLoggerCallback whose runs carry the trial's cell, stage and seed as tags, and whose
    result hand-off never blocks Tune's loop.

    Ray 2.60's callback puts every result into a per-trial queue actor with a blocking
    ``ray.get``; the first put waits for that actor's process to start, which took 2-16 s per
    trial on a 2-core machine and stalled the whole driver. Here results are sent with
    fire-and-forget actor calls (Ray keeps their order per caller); the end-of-trial signal
    is sent the same way, after them, and the experiment end waits for every run to finish.
    """

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        if trial not in self._trial_logging_actors:
            self.log_trial_start(trial)
        result = _clean_log(result, video_kwargs=self.video_kwargs,
                            image_kwargs=self.image_kwargs)
        self._trial_queues[trial].actor.put_nowait.remote((_QueueItem.RESULT, result))

    def _signal_logging_actor_stop(self, trial) -> None:
        # after the results sent above (same caller, same actor: order kept)
        self._trial_queues[trial].actor.put_nowait.remote((_QueueItem.END, None))

    def log_trial_start(self, trial) -> None:
        spec = trial_spec(trial.config)
        self.kwargs["tags"] = [f"cell:{spec['cell']}", f"stage:{spec.get('stage', 'search')}"] + (
            [f"seed:{spec['seed']}"] if "seed" in spec else [])
        super().log_trial_start(trial)


def make_callback(project: str, group: str, directory: Path) -> CellWandbCallback:
    directory.mkdir(parents=True, exist_ok=True)
    return CellWandbCallback(project=project, group=group, dir=str(directory),
                             excludes=["error"])
