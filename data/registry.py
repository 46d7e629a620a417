"""Task name -> builder from a run config: the only place a task is chosen.

A builder receives the whole run config (duck-typed: data never imports tuner) and picks its
own section (the LDS reads ``cfg.data`` and the model's patch size).
"""

from __future__ import annotations

from data.lds_task import LDSTask

TASKS = {
    "lds": lambda cfg: LDSTask.create(cfg.data, cfg.model.patch_size),
}
