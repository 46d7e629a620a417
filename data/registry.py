"""Task name -> task class. A task builds itself from its config with ``create(cfg, patch_size)``."""

from __future__ import annotations

from data.lds_task import LDSTask

TASKS = {"lds": LDSTask}
