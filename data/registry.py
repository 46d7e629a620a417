"""Task name -> task class; a task builds itself with ``create(cfg, patch_size)``."""

from __future__ import annotations

from data.lds_task import LDSTask

TASKS = {"lds": LDSTask}
