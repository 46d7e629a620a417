"""W&B offline run folders read back for the tests with W&B's own reader: ``wandb-core leet
inspect --json`` (the Go core shipped in the ``wandb`` package, behind ``wandb leet inspect``)
prints a ``.wandb`` file's records as JSON lines. Independent of the service's own reader
(``tuner.service.wandb_records``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tuner.service.trial_spec import TrialSpec


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


def run_config(folder: Path) -> dict[str, Any]:
    """The config of one offline run folder's run record ({} where a kill left none)."""
    run = next((r["run"] for r in wandb_records(folder) if r["type"] == "run"), None)
    return {} if run is None else run["config"]["update"]


def _rows(path: Path) -> list[dict[str, Any]]:
    """A result.json's rows, one per training_iteration (the last written), in order."""
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["training_iteration"]] = row
    return [rows[i] for i in sorted(rows)]


def _study_states(root: Path, round_name: str) -> dict[tuple[str, int], tuple[str, str]]:
    """(cell, Optuna number) -> (state as W&B's summary names it, Tune trial id) of a round."""
    import optuna

    from tuner.service.dirs import ExperimentDirs

    out = {}
    for journal in ExperimentDirs(root).round_studies(round_name).glob("*.journal"):
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal)))
        for t in optuna.load_study(study_name=journal.stem, storage=storage).trials:
            state = ("diverged" if t.user_attrs.get("diverged") else
                     {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(
                         t.state.name, "running"))
            out[journal.stem, t.number] = (state, t.user_attrs.get("tune_trial_id"))
    return out


def expected_members(root: Path) -> dict[tuple, dict[str, Any]]:
    """Each member an experiment trained, from Tune's ``result.json`` and the studies (not
    from the W&B writer): (round, cell, Optuna number or None, seed or None, Tune trial id
    of a one-rate trial or None) -> its ``lr``, its rows by iteration (its own values, plain
    names) and its ``state``. A population member re-handed to a new Tune trial after a kill
    is the one its study names."""
    out: dict[tuple, dict[str, Any]] = {}
    finals = {}
    if (root / "finals.json").exists():
        finals = {(r["cell"], r["seed"]): r for r in json.loads((root / "finals.json").read_text())}
    for result in sorted(root.glob("*/*/result.json")):
        params = json.loads((result.parent / "params.json").read_text())
        rows, round_name = _rows(result), result.parent.parent.name
        if not rows or "pilot" in params:
            continue
        tid = rows[0]["trial_id"]
        if "final" in params:  # one cell's seeds (seed_<s>/) or a shared program's (member_<i>/)
            spec = TrialSpec.of(params)
            for i, m in enumerate(spec.members):
                pre = spec.prefix(i)
                own = {r["training_iteration"]: {k[len(pre):]: v for k, v in r.items()
                                                 if k.startswith(pre)}
                       for r in rows if r.get(pre + "step") == r["step"]}
                diverged = finals.get((m.cell, m.seed), {}).get("diverged")
                out[round_name, m.cell, None, m.seed, None] = {
                    "lr": m.lr, "rows": own, "state": "diverged" if diverged else "complete"}
            continue
        states = _study_states(root, round_name)
        if "members" not in params:
            state = next((st for (c, _), (st, t) in states.items() if t == tid), None)
            out[round_name, params["cell"], None, None, tid] = {
                "lr": params["lr"], "rows": {r["training_iteration"]: r for r in rows},
                "state": state}
            continue
        for i, m in enumerate(params["members"]):
            state, owner = states[m["cell"], m["number"]]
            if owner != tid:
                continue  # handed to a later Tune trial after a kill
            own = {r["training_iteration"]: {k[len(f"member_{i}/"):]: v for k, v in r.items()
                                             if k.startswith(f"member_{i}/")}
                   for r in rows if r.get(f"member_{i}/step") == r["step"]}
            out[round_name, m["cell"], m["number"], None, None] = {
                "lr": m["lr"], "rows": own, "state": state, "wave": params["wave"],
                "source": m.get("source")}
    return out


def check_member_runs(root: Path) -> dict[str, dict[str, Any]]:
    """``wandb sync`` of the experiment's W&B folder, read with W&B's reader, gives one run
    per member (a searched rate, a final seed): its cell, rate (and wave, source, seed) in
    the config, its state in the summary, its history every iteration the member reported,
    once, with the values its trial reported for it. Returns the synced runs."""
    import math

    import pytest

    runs = synced_runs(root)
    members = {}
    for run_id, run in runs.items():
        c = run["config"]
        if run["job_type"] == "program":
            assert "lr" not in c and not any(k.startswith("eval/") for h in
                                              run["history"].values() for k in h), run_id
            continue
        key = (c.get("round"), c.get("cell"), c.get("number"), c.get("seed"),
               None if "number" in c or "seed" in c else c.get("tune_trial_id"))
        assert key not in members, (key, run_id, members.get(key))  # one run per member
        members[key] = run_id
    expected = expected_members(root)
    assert set(members) == set(expected), (set(members) ^ set(expected))
    for key, want in expected.items():
        run = runs[members[key]]
        c = run["config"]
        assert c["lr"] == pytest.approx(want["lr"], rel=1e-12) and c["cell"] == key[1]
        assert run["job_type"] == key[1] and f"cell:{key[1]}" in run["tags"]
        assert run["run_group"] == root.name  # the experiment's (the tests' folders: its name)
        for field in ("wave", "source"):
            if want.get(field) is not None:
                assert c[field] == want[field], (key, field)
        assert run["finished"] and run["summary"].get("state") == want["state"], (
            key, run["summary"].get("state"), want["state"], run["finished"])
        assert run["steps"] == sorted(want["rows"]), (key, run["steps"], sorted(want["rows"]))
        for it, row in want["rows"].items():
            logged = run["history"][it]
            for k, v in row.items():
                if (k == "step" or k.startswith("eval/") or k == "train_loss") and \
                        isinstance(v, float | int) and math.isfinite(v):
                    assert logged[k] == pytest.approx(v, rel=1e-6), (key, it, k)
    return runs
