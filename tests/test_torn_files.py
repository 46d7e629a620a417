"""Torn and damaged files of the experiment folder, on real Optuna journals and real files:
a journal whose last record was cut is repaired (original kept, only the tail dropped) and
loads with every earlier trial; damage elsewhere, or a damaged JSON result file, is a clear
error naming the file and the remedy. (The same after a real SIGKILL: tests/test_service.py.)"""

from __future__ import annotations

import json
import math
import os
import pickle
import socket
import stat
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tuner.service.files import DamagedFile, read_json, write_json
from tuner.service.search.journal_repair import JournalDamaged, repair_torn_tail
from tuner.service.search.study import CellStudy

ROOT = Path(__file__).parent.parent


def journal(path: Path) -> CellStudy:
    """A real cell study: three trials (complete, pruned with a report, running)."""
    study = CellStudy(path, "patch=1", "minimize",
                      lambda n: optuna.samplers.RandomSampler(seed=n))
    n0, _ = study.ask_lr(1e-4, 1e-1)
    study.report(n0, 10, 0.5)
    study.tell(n0, optuna.trial.TrialState.COMPLETE, 0.4)
    n1, _ = study.ask_lr(1e-4, 1e-1)
    study.report(n1, 10, 0.9)
    study.tell(n1, optuna.trial.TrialState.PRUNED, None)
    n2, _ = study.ask_lr(1e-4, 1e-1)
    study.report(n2, 10, 0.7)
    return study


def trials(study: CellStudy) -> list[tuple]:
    return [(t.number, t.state.name, t.params, dict(t.intermediate_values))
            for t in study.trials()]


def reopen(path: Path) -> CellStudy:
    return CellStudy(path, "patch=1", "minimize", lambda n: optuna.samplers.RandomSampler(n))


@pytest.mark.parametrize("cut", ["mid-record", "before-newline"])
def test_torn_last_record_dropped_and_original_kept(tmp_path, capsys, cut):
    path = tmp_path / "patch=1.journal"
    whole = trials(journal(path))
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1  # the last record: trial 2's report
    torn = data[:last_start + 25]
    if cut == "before-newline":  # a record whose end was lost but whose line ended
        torn += b"\n"
    path.write_bytes(torn)
    out = repair_torn_tail(path)
    assert f"repaired {path}" in out and "was cut" in out and "patch=1.journal.torn-1" in out
    assert (tmp_path / "patch=1.journal.torn-1").read_bytes() == torn  # the original, as found
    assert path.read_bytes() == data[:last_start]  # only the torn record went
    study = reopen(path)
    # every trial is there; only trial 2's last report (the dropped record) is missing
    got = trials(study)
    assert got[:2] == whole[:2]
    assert got[2][:3] == whole[2][:3] and got[2][3] == {}
    # the study goes on: trial 2 reports again (as its resumed Tune trial does) and is told
    study.report(2, 10, 0.7)
    study.tell(2, optuna.trial.TrialState.COMPLETE, 0.3)
    assert trials(reopen(path))[2][1:] == ("COMPLETE", whole[2][2], {10: 0.7})
    assert not list(tmp_path.glob("*.torn-2"))  # whole again: nothing more to do


def test_opening_a_torn_study_repairs_and_says_so(tmp_path, capsys):
    """CellStudy (what the searcher opens on resume) repairs and prints; a second tear later
    keeps its own original beside the first."""
    path = tmp_path / "c.journal"
    journal(path)
    for n in (1, 2):
        path.write_bytes(path.read_bytes()[:-7])
        assert len(reopen(path).trials()) == 3
        assert (tmp_path / f"c.journal.torn-{n}").exists()
        assert f"the original is saved as c.journal.torn-{n}" in capsys.readouterr().out


def test_damage_before_the_last_record_is_a_clear_error(tmp_path):
    path = tmp_path / "patch=1.journal"
    journal(path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:10]
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    with pytest.raises(JournalDamaged) as e:
        reopen(path)
    msg = str(e.value)
    assert str(path) in msg and "line 3 of" in msg and "new --out folder" in msg
    assert path.read_bytes() == before and not list(tmp_path.glob("*.torn-*"))  # untouched


def test_whole_journal_untouched(tmp_path):
    path = tmp_path / "c.journal"
    journal(path)
    before = path.read_bytes()
    assert repair_torn_tail(path) is None and path.read_bytes() == before
    assert repair_torn_tail(tmp_path / "missing.journal") is None


def test_json_written_atomically_and_damage_named(tmp_path):
    path = tmp_path / "finals.json"
    write_json(path, [{"cell": "a", "nmse": math.pi}])
    assert read_json(path, "x") == [{"cell": "a", "nmse": math.pi}]
    assert [p.name for p in tmp_path.iterdir()] == ["finals.json"]  # no temporary left
    path.write_text('[{"cell": "a", "nm')
    with pytest.raises(DamagedFile, match=r"finals.json is damaged \(line 1, column \d+: .*"
                                          r"\); delete it"):
        read_json(path, "delete it")
    path.write_text("")
    with pytest.raises(DamagedFile, match="it is empty"):
        read_json(path, "delete it")


def test_cli_exits_2_on_a_damaged_result_file(tmp_path):
    """A damaged search_options.json (read before Ray starts): exit 2, one line naming the file
    and the remedy, no traceback."""
    out = tmp_path / "out"
    folder = out / "tiny"
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text((ROOT / "tests/fixtures/tiny.yaml").read_text())
    (folder / "search_options.json").write_text('{"widen_edges": tr')
    res = subprocess.run([sys.executable, "-m", "tuner.run", "tests/fixtures/tiny.yaml",
                          "--out", str(out), "--no-wandb", "--num-cpus", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "search_options.json is damaged" in res.stderr and "--widen-edges" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (folder / "driver.lock").exists()  # released on that exit too


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_keep_the_umask_mode(tmp_path, mask):
    """A JSON result file and a journal rewritten by a repair get 0666 less the umask (0644
    under 022: a colleague or a viewer run by another user reads them), not mkstemp's 0600."""
    path = tmp_path / "c.journal"
    journal(path)
    before = os.umask(mask)
    try:
        write_json(tmp_path / "status.json", {"stage": "search"})
        path.write_bytes(path.read_bytes()[:-7])
        assert repair_torn_tail(path)
    finally:
        os.umask(before)
    for written in (tmp_path / "status.json", path):
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~mask, written


def _records(path: Path) -> list[bytes]:
    return path.read_bytes().rstrip(b"\n").split(b"\n")


def test_json_that_is_no_record_is_damage(tmp_path):
    """Valid JSON that is no Optuna record (here another tool's line) is damage, last or not:
    a clear error, the file untouched; a cut record would not parse."""
    path = tmp_path / "c.journal"
    journal(path)
    records = _records(path)
    for where in (1, len(records)):
        lines = [*records]
        lines.insert(where, b'{"note": "not a record"}')
        path.write_bytes(b"\n".join(lines) + b"\n")
        before = path.read_bytes()
        with pytest.raises(JournalDamaged, match=rf"line {where + 1} of .*not a complete"):
            repair_torn_tail(path)
        assert path.read_bytes() == before


@pytest.mark.parametrize("where", ["all", "tail"])
def test_nul_filled_journal_stops_with_file_and_remedy(tmp_path, where):
    """NULs where records were (a node crash before NFS wrote the blocks): an error naming the
    file and the remedy, never an emptied journal."""
    path = tmp_path / "c.journal"
    journal(path)
    data = path.read_bytes()
    keep = 0 if where == "all" else data.index(b"\n") + 1
    path.write_bytes(data[:keep] + b"\0" * (len(data) - keep))
    with pytest.raises(JournalDamaged) as e:
        repair_torn_tail(path)
    msg = str(e.value)
    assert str(path) in msg and f"NUL bytes from byte {keep}" in msg
    assert "Restore the file from a copy" in msg and "new --out folder" in msg
    assert len(path.read_bytes()) == len(data) and not list(tmp_path.glob("*.torn-*"))


def test_cut_record_followed_by_a_whole_one_keeps_the_whole_one(tmp_path):
    """A driver killed mid-record, the next one appending to the cut line (no repair between),
    then more records: the cut part goes, the whole record on that line and all after stay."""
    path = tmp_path / "patch=1.journal"
    whole = trials(journal(path))
    records = _records(path)
    cut_at = len(records) - 1  # trial 2's report, cut; trial 2's ask stays before it
    lines = [*records[:cut_at], records[cut_at][:30] + records[cut_at], b""]
    path.write_bytes(b"\n".join(lines))
    out = repair_torn_tail(path)
    assert f"line {cut_at + 1}, 30 bytes" in out and "was cut" in out
    assert _records(path) == records
    assert trials(reopen(path)) == whole


def test_cut_tune_snapshot_set_aside_for_the_previous(tmp_path):
    """A Tune run folder whose newest experiment_state (by name, what Tune restores) was cut:
    set aside, the previous whole one left to be restored; an only snapshot cut stops with the
    file and the remedy, before Ray."""
    from tuner.service.dirs import ExperimentDirs
    from tuner.service.folder_check import check

    run = tmp_path / "search" / "round-0"
    run.mkdir(parents=True)
    old = run / "experiment_state-2026-01-01_00-00-00.json"
    old.write_text('{"trial_data": [], "runner_data": {}}')
    new = run / "experiment_state-2026-01-02_00-00-00.json"
    new.write_text('{"trial_data": [["{\\"trial_id\\": \\"a')
    messages = check(ExperimentDirs(tmp_path))
    assert len(messages) == 1 and str(new) in messages[0] and old.name in messages[0]
    assert sorted(p.name for p in run.iterdir()) == [old.name, new.name + ".torn"]
    old.write_text('{"trial_data": [["{\\"tri')  # now the only one, cut
    with pytest.raises(DamagedFile) as e:
        check(ExperimentDirs(tmp_path))
    assert str(old) in str(e.value) and "no earlier whole one" in str(e.value)
    assert f"delete the folder {run}" in str(e.value)


def test_cut_tune_snapshot_put_back_from_its_whole_copy(tmp_path):
    """A snapshot (Tune's JSON and its searcher's pickle) cut while Tune copied it into the
    folder, beside the whole copy the driver kept: put back from the copy, the cut one kept as
    ``.torn``; a whole snapshot is left as it is, whatever its copy holds."""
    from tuner.service.dirs import ExperimentDirs
    from tuner.service.folder_check import check

    run = tmp_path / "finals"
    run.mkdir()
    state = {"trial_data": [[json.dumps({"trial_id": "a"}), "{}"]], "runner_data": {}}
    whole = {run / "experiment_state-2026-01-02_00-00-00.json": json.dumps(state).encode(),
             run / "searcher-state-2026-01-02_00-00-00.pkl": pickle.dumps({"cells": [1, 2]})}
    for path, data in whole.items():
        path.with_name(path.name + ".whole").write_bytes(data)
        path.write_bytes(data[: len(data) // 2])
    messages = check(ExperimentDirs(tmp_path))
    assert len(messages) == 2 and all("put back from the whole copy" in m for m in messages)
    for path, data in whole.items():
        assert path.read_bytes() == data
        assert path.with_name(path.name + ".torn").read_bytes() == data[: len(data) // 2]
    older = run / "experiment_state-2026-01-01_00-00-00.json"
    older.write_text('{"trial_data": [], "runner_data": {}}')
    older.with_name(older.name + ".whole").write_text('{"trial_data": [1], "runner_data": {}}')
    assert check(ExperimentDirs(tmp_path)) == []
    assert older.read_text() == '{"trial_data": [], "runner_data": {}}'


def test_a_cluster_address_that_does_not_answer_is_one_line(tmp_path):
    """--address where nothing listens (a cluster that stopped, a wrong port): exit 1 at once
    with one line naming the address and what to check, rather than Ray retrying it for
    minutes with a warning every few seconds."""
    with socket.socket() as s:  # a port free now: nothing answers there
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-m", "tuner.run", "tests/fixtures/tiny.yaml",
                          "--out", str(tmp_path / "out"), "--no-wandb", "--address", address],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: Ray cluster at {address} did not "
                                                   "answer"), res.stderr
    assert "--address" in lines[0] and "ray status" in lines[0]


def test_ray_temp_path_too_long_is_one_line_before_ray(tmp_path):
    """RAY_TMPDIR of a per-job scratch folder too long for Ray's Unix sockets: exit 2 before
    Ray starts, one line with the longest allowed and the variable to set, no traceback."""
    from tuner.service.ray_start import SOCKET_PATH_MAX, SOCKET_SUFFIX

    scratch = tmp_path / ("job-" + "x" * 40)
    scratch.mkdir()
    env = dict(os.environ, RAY_TMPDIR=str(scratch), JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-m", "tuner.run", "tests/fixtures/tiny.yaml",
                          "--out", str(tmp_path / "out"), "--no-wandb"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120, env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    allowed = SOCKET_PATH_MAX - SOCKET_SUFFIX
    assert allowed == 32  # 107 bytes less Ray's /ray/session_<date>_<pid>/sockets/dash_...
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Ray cannot start"), res.stderr
    assert f"at most {allowed} characters" in lines[0] and "RAY_TMPDIR" in lines[0]
    assert str(scratch) in lines[0] and not (tmp_path / "out").exists()


def test_a_dashboard_port_in_use_is_one_line(tmp_path):
    """--dashboard-port where another service listens: exit 1 with one line naming the port
    and the remedies, no stack of Ray's, and nothing of the experiment trained."""
    with socket.socket() as taken:  # held for the whole run: the port is in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        res = subprocess.run([sys.executable, "-m", "tuner.run", "tests/fixtures/tiny.yaml",
                              "--out", str(tmp_path / "out"), "--no-wandb", "--num-cpus", "1",
                              "--dashboard-port", str(port)], capture_output=True, text=True,
                             cwd=ROOT, timeout=180, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: Ray cannot start: a port it needs "
                                                   "is in use"), res.stderr
    assert str(port) in lines[0] and "--dashboard-port" in lines[0]
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "out").glob("*/search"))
