"""Node tags that survive between autoscaler calls and processes.

Ray's autoscaler creates a provider object in `ray up`, another in `ray down` and one in the
head's monitor process, and it keeps nothing of a node but what the provider remembers. Slurm
cannot hold Ray's tags, so they live in one JSON file per cluster, guarded by a file lock because
those processes may run at the same time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

#: Tags of every node, keyed by node id: {"<node id>": {"<tag>": "<value>", ...}}.
NodeTable = dict[str, dict[str, str]]


class NodeStateStore:
    """A JSON file of node tags, read and rewritten atomically under a lock.

    Args:
        path: The JSON file; its directory is created if needed.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock", timeout=60)

    def read(self) -> NodeTable:
        """Returns a snapshot of all nodes' tags."""
        with self._lock:
            return self._load()

    def update(self, change: Callable[[NodeTable], Any]) -> NodeTable:
        """Applies `change` to the table in place, under the lock, and saves the result."""
        with self._lock:
            table = self._load()
            change(table)
            self._save(table)
            return table

    def _load(self) -> NodeTable:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _save(self, table: NodeTable) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
