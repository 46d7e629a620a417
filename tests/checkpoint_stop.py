"""A training run killed right after a checkpoint, for the resume tests of the core loops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.core import checkpoint


class Stop(Exception):
    """Raised by :func:`save_then_stop`'s callback once it has saved."""


def save_then_stop(path: Path, at_step: int) -> Callable[[int, Any, Any], None]:
    """An ``on_eval`` callback that checkpoints to ``path`` at ``at_step``, then stops the run
    (as a kill right after the save would)."""

    def on_eval(step: int, progress: Any, states: Any) -> None:
        if step == at_step:
            checkpoint.save(path, states, progress)
            raise Stop

    return on_eval
