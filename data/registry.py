"""Task name -> builder from a run config: the only place a task is chosen.

A builder receives the whole run config (duck-typed: data never imports tuner) and picks its
own section (the LDS reads ``cfg.data`` and the model's patch size).
"""

from __future__ import annotations

from data.bigram import BigramTask
from data.lds_task import LDSTask
from data.modular import ModularTask
from data.text import TextTask

TASKS = {
    "lds": lambda cfg: LDSTask.create(cfg.data, cfg.model.patch_size),
    "bigram": lambda cfg: BigramTask.create(cfg.bigram),
    "modular": lambda cfg: ModularTask.create(cfg.modular),
    "text": lambda cfg: TextTask.create(cfg.text),
}
