"""W&B offline run folders read back for the tests with W&B's own reader: ``wandb-core leet
inspect --json`` (the Go core shipped in the ``wandb`` package, behind ``wandb leet inspect``)
prints a ``.wandb`` file's records as JSON lines. Independent of the service's own reader
(``tuner.service.wandb_records``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def wandb_records(folder: Path) -> list[dict[str, Any]]:
    """The records of one offline run folder (its ``.wandb`` file), as W&B's core reads them."""
    from wandb.util import get_core_path

    files = list(folder.glob("*.wandb"))
    if not files:
        return []
    out = subprocess.run([get_core_path(), "leet", "inspect", "--no-observability", "--json",
                          "--run-file", str(files[0]), str(folder.parent)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_folders(root: Path) -> list[tuple[str, Path]]:
    """(run id, folder) of every offline run folder of an experiment, oldest first (the order
    ``wandb sync`` uploads a run's fragments in)."""
    folders = sorted((root / "wandb" / "wandb").glob("offline-run-*"))
    return [(f.name.rsplit("-", 1)[-1], f) for f in folders]  # offline-run-<time>-<id>


def wandb_runs(root: Path) -> dict[str, list[tuple[bool | None, list[int]]]]:
    """Run id -> (its ``resume`` flag, its logged steps) per offline run folder, oldest first
    (the flag None where a killed run wrote no run record yet)."""
    out: dict[str, list[tuple[bool | None, list[int]]]] = {}
    for run_id, folder in run_folders(root):
        records = wandb_records(folder)
        run = next((r["run"] for r in records if r["type"] == "run"), None)
        assert run is None or run["run_id"] == run_id
        steps = [int(r["history"]["step"]["num"]) for r in records if r["type"] == "history"]
        resume = None if run is None else bool(run.get("resume"))
        out.setdefault(run_id, []).append((resume, steps))
    return out


def wandb_history(root: Path) -> dict[str, list[dict[str, object]]]:
    """Run id -> every history row it logged (key -> value), over its folders."""
    out: dict[str, list[dict[str, object]]] = {}
    for run_id, folder in run_folders(root):
        rows = out.setdefault(run_id, [])
        rows += [r["history"]["item"] for r in wandb_records(folder) if r["type"] == "history"]
    return out


def synced_runs(root: Path) -> dict[str, dict[str, Any]]:
    """What ``wandb sync`` of the experiment's W&B folder gives per run id: its fragments in
    order, their run records (config, group, job type, tags; the last fragment's win), every
    history row by W&B step (``steps`` in logging order over the fragments, so a step logged
    twice shows twice) and the summary's last values."""
    out: dict[str, dict[str, Any]] = {}
    for run_id, folder in run_folders(root):
        run = out.setdefault(run_id, {"config": {}, "steps": [], "history": {}, "summary": {},
                                      "fragments": 0, "finished": False})
        run["fragments"] += 1
        for r in wandb_records(folder):
            if r["type"] == "run":
                record = r["run"]
                run["config"].update({k: v for k, v in record["config"]["update"].items()
                                      if k != "_wandb"})
                run |= {k: record.get(k) for k in ("run_group", "job_type", "display_name")}
                run["tags"] = record.get("tags", [])
            elif r["type"] == "history":
                step = int(r["history"]["step"]["num"])
                run["steps"].append(step)
                run["history"][step] = r["history"]["item"]
            elif r["type"] == "summary":
                run["summary"].update(r["summary"].get("update", {}))
            elif r["type"] == "exit":
                run["finished"] = True
    return out
