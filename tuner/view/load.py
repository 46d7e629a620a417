"""Experiment folders read into pandas tables for the viewer (no Panel here: testable alone).

Only files the service already writes are read (``tuner.service.dirs`` names them), so there is
no second format to keep in step. While an experiment runs, its stage result files
(``search_best.json``, ``search_trials.csv``, ``finals.json``, ``report/``) do not exist yet;
the same tables are then built from what is written as it happens: the per-cell Optuna journals
(``studies/``, the search's one record), Ray Tune's trial folders (``params.json`` and
``result.json``, one JSON line per evaluation) and ``status.json``. A half-written last line of
a ``result.json`` is skipped, so a read never fails on a trial that is reporting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from data.registry import TASKS, metric_mode
from tuner.service import experiment
from tuner.service.dirs import ExperimentDirs
from tuner.service.objective import is_finite
from tuner.service.report.verdicts import finished
from tuner.service.search.study import DIVERGED_ATTR, TUNE_ID_ATTR
from tuner.service.trial_spec import TrialSpec, member_key, overrides, part

TRIAL_COLUMNS = ["cell", "round", "number", "lr", "state", "value", "last_step", "diverged",
                 "tune_trial_id"]
_CURVE_EXTRA = ("train_loss", "grad_norm", "lr_now")  # non-eval keys worth a curve


class NotAnExperiment(ValueError):
    """A path that is not an experiment folder (nor a folder of them); the message names it."""


class FileCache:
    """Parsed files keyed by path, re-read only when their size or mtime changed.

    Polling a running experiment every few seconds then costs one ``stat`` per file; each viewer
    session owns one (no module-level state).
    """

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int], Any]] = {}
        self.version = 0  # bumped at every (re-)parse: a changed file means a redraw

    def get(self, path: Path, parse) -> Any:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        hit = self._seen.get(path)
        if hit is None or hit[0] != key:
            hit = (key, parse(path))
            self._seen[path] = hit
            self.version += 1
        return hit[1]


@dataclasses.dataclass
class Folder:
    """One experiment folder and its (validated) experiment file.

    Attributes:
        root: The folder ``tuner.run`` wrote (``<out>/<name>[-smoke]``).
        exp: Its ``experiment.yaml`` loaded by the service's own loader (cells, claims, metric).
        cache: Parsed files of this folder.
        label: How the page names it (the folder's name; with its parent's where two of the
            folders shown share a name).
    """

    root: Path
    exp: experiment.Experiment
    cache: FileCache = dataclasses.field(default_factory=FileCache)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or self.root.name

    @property
    def dirs(self) -> ExperimentDirs:
        return ExperimentDirs(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def curve(self) -> dict[str, Any] | None:
        """The task's curve after training (the LDS rollouts), as the report draws it."""
        return getattr(TASKS[self.exp.base.task], "CURVE", None)

    def mode(self, metric: str) -> str:
        return metric_mode(self.exp.base.task, metric)


def open_folder(path: str | Path) -> Folder:
    """The experiment folder at ``path``; :class:`NotAnExperiment` if it is not one.

    The folder's ``experiment.yaml`` is the copy taken when the run started; ``--smoke`` is
    not recorded, so it is read as the profile whose name is the folder's name.
    """
    root = Path(path).absolute()
    frozen = ExperimentDirs(root).experiment_file
    if not frozen.is_file():
        raise NotAnExperiment(f"{path}: not an experiment folder (no experiment.yaml; give a "
                              "folder that `python -m tuner.run` wrote, or one holding such)")
    try:
        exp = experiment.load(str(frozen))
        if exp.name != root.name and root.name.endswith("-smoke"):
            exp = experiment.load(str(frozen), smoke=True)
    except experiment.SearchSpaceError as e:
        raise NotAnExperiment(f"{path}: its experiment.yaml does not load: {e}") from None
    return Folder(root, exp)


def find_folders(paths: list[str | Path]) -> list[Folder]:
    """Every experiment folder named, or directly inside a folder named (``experiments/``)."""
    out = []
    for path in paths:
        p = Path(path)
        if not p.is_dir():
            raise NotAnExperiment(f"{path}: no such folder")
        if ExperimentDirs(p).experiment_file.is_file():
            out.append(open_folder(p))
            continue
        inside = sorted(d for d in p.iterdir() if ExperimentDirs(d).experiment_file.is_file())
        if not inside:
            raise NotAnExperiment(f"{path}: no experiment folder here (none of it or its "
                                  "subfolders holds the experiment.yaml that tuner.run writes)")
        out += [open_folder(d) for d in inside]
    names = [f.name for f in out]
    for f in out:
        if names.count(f.name) > 1:
            f.label = f"{f.root.parent.name}/{f.name}"
    return out


# ------------------------------------------------------------------------------ raw files
def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def _json_lines(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line a running trial is writing
            continue
    return rows


def _journal_trials(path: Path) -> list[Any]:
    """The trials of the one study in an Optuna journal, read-only."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(path)))
    return [t for s in storage.get_all_studies()
            for t in optuna.load_study(study_name=s.study_name, storage=storage)
            .get_trials(deepcopy=False)]


def status(folder: Folder) -> dict[str, Any] | None:
    """``status.json`` (live progress of the running stage), None before the first trial."""
    return folder.cache.get(folder.dirs.status, _json)


def stage(folder: Folder) -> str:
    """Where the experiment stands, from which result files exist."""
    dirs = folder.dirs
    if dirs.summary.exists():
        return "done"
    if dirs.finals.exists():
        return "finals done, report pending"
    if dirs.best.exists():
        return "finals" if dirs.finals_runs.exists() else "search done"
    if dirs.round_runs("search").exists():
        return "search"
    return "not started"


def _trial_folders(folder: Folder, rounds: tuple[str, ...]) -> list[tuple[str, Path]]:
    return [(rnd, p.parent) for rnd in rounds
            for p in sorted((folder.root / rnd).glob("*/params.json"))]


# ------------------------------------------------------------------------------ search
def search_trials(folder: Folder) -> pd.DataFrame:
    """One row per search trial (``TRIAL_COLUMNS``): ``search_trials.csv`` once the search has
    finished, until then the journals of every round (``ExperimentDirs.round_studies``)."""
    csv = folder.cache.get(folder.dirs.search_trials, pd.read_csv)
    if csv is not None:
        return csv.reindex(columns=TRIAL_COLUMNS)
    rows = []
    for rnd in folder.dirs.search_rounds():
        for path in sorted(folder.dirs.round_studies(rnd).glob("*.journal")):
            for t in folder.cache.get(path, _journal_trials) or []:
                rows.append({"cell": path.stem, "round": rnd, "number": t.number,
                             "lr": t.params.get("lr"), "state": t.state.name, "value": t.value,
                             "last_step": max(t.intermediate_values, default=None),
                             "diverged": bool(t.user_attrs.get(DIVERGED_ATTR, False)),
                             "tune_trial_id": t.user_attrs.get(TUNE_ID_ATTR)})
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def best_lr(folder: Folder) -> pd.DataFrame:
    """Per cell: best lr and its search value, ``final`` True when ``search_best.json`` says so
    (the service's choice), False for the best full-budget trial so far of a running search."""
    saved = folder.cache.get(folder.dirs.best, _json)
    rows = []
    if saved is not None:
        for cell, b in saved.items():
            rows.append({"cell": cell, "best lr": b and b["lr"], "value": b and b["value"],
                         "at_edge": b and b.get("at_edge"), "final": True})
        return pd.DataFrame(rows)
    trials = search_trials(folder)
    done = trials[(trials.state == "COMPLETE") & trials.value.map(is_finite)]
    sign = 1 if folder.exp.asha.mode == "min" else -1
    for cell, group in done.groupby("cell", sort=False):
        b = group.loc[(sign * group.value.astype(float)).idxmin()]
        rows.append({"cell": cell, "best lr": b.lr, "value": b.value, "at_edge": None,
                     "final": False})
    return pd.DataFrame(rows, columns=["cell", "best lr", "value", "at_edge", "final"])


def cells(folder: Folder) -> pd.DataFrame:
    """The grid: one row per cell with its axis values, best lr, search trials by state and
    its finals' mean of the searched metric."""
    exp = folder.exp
    trials, best = search_trials(folder), best_lr(folder).set_index("cell")
    fin = finals(folder)
    ok = finished(fin) if len(fin) else fin
    live = (status(folder) or {}).get("cells", {})
    rows = []
    for cell, over in exp.cells().items():
        of = trials[trials.cell == cell]
        div = int(of.diverged.fillna(False).astype(bool).sum())
        st = of.state.value_counts()
        b = best.loc[cell] if cell in best.index else None
        row = {"cell": cell, **over,
               "best lr": None if b is None else b["best lr"],
               f"search {exp.asha.metric}": None if b is None else b["value"],
               "chosen": "" if b is None else ("yes" if b["final"] else "so far"),
               "edge": "" if b is None or not b["at_edge"] else b["at_edge"],
               "trials (done/pruned/diverged/failed/running)":
                   f"{st.get('COMPLETE', 0)}/{st.get('PRUNED', 0) - div}/{div}/"
                   f"{st.get('FAIL', 0)}/{live.get(cell, {}).get('running', 0)}"}
        of_final = ok[ok.cell == cell] if len(ok) else ok
        if exp.asha.metric in of_final:
            row[f"finals {exp.asha.metric}"] = _mean_sd(of_final[exp.asha.metric])
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ rates
LANDSCAPE_COLUMNS = ["cell", "round", "number", "lr", "kind", "value", "step", "tune_trial_id"]
KINDS = ("complete", "pruned", "diverged", "failed", "running")  # how a search trial ended


def _kind(state: Any, diverged: Any) -> str:
    if str(diverged).strip().lower() in ("true", "1", "1.0"):  # bool, numpy bool or CSV text
        return "diverged"
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(str(state),
                                                                            "running")


def _last_reports(folder: Folder) -> dict[tuple, dict[str, Any]]:
    """(Tune trial id,) or, for a population's member, (id, cell, Optuna trial number) -> its
    latest evaluation (``step`` and the metrics), from the trial folders: the value a running
    trial has reached, which no journal holds yet."""
    out = {}
    for _, trial in _trial_folders(folder, tuple(folder.dirs.search_rounds())):
        params = folder.cache.get(trial / "params.json", _json)
        results = folder.cache.get(trial / "result.json", _json_lines) or []
        if not params or not results:
            continue
        tid, spec = str(results[-1].get("trial_id", "")), TrialSpec.of(params)
        if not spec.is_population:
            out[tid,] = results[-1]
            continue
        for j, m in enumerate(spec.members):
            own = next((part(r, member_key(j, "")) for r in reversed(results)
                        if member_key(j, "step") in r), {})
            out[tid, m.cell, m.number] = own
    return out


def landscape(folder: Folder) -> pd.DataFrame:
    """The searched metric against the rate: one row per search trial at the last rung it
    reached (``LANDSCAPE_COLUMNS``; ``kind`` one of ``KINDS``).

    ``value`` is the trial's value in the study (a complete trial's full-budget value, a pruned
    one's at the rung where it stopped); a running trial, or one whose study value is missing,
    takes its latest report from its Tune folder. A diverged or failed trial has none (NaN).
    """
    trials = search_trials(folder)
    reports = _last_reports(folder)
    metric = folder.exp.asha.metric
    rows = []
    for t in trials.itertuples(index=False):
        kind = _kind(t.state, t.diverged)
        latest = reports.get((str(t.tune_trial_id), t.cell, t.number),
                             reports.get((str(t.tune_trial_id),), {}))
        value, step = t.value, t.last_step
        if kind in ("diverged", "failed"):
            value = math.nan
        elif not is_finite(value):
            value, step = latest.get(metric, math.nan), latest.get("step", step)
        rows.append({"cell": t.cell, "round": t.round, "number": t.number, "lr": t.lr,
                     "kind": kind, "value": float(value) if is_finite(value) else math.nan,
                     "step": step, "tune_trial_id": t.tune_trial_id})
    return pd.DataFrame(rows, columns=LANDSCAPE_COLUMNS)


def chosen(folder: Folder) -> pd.DataFrame:
    """Per cell: the chosen (or best so far) ``lr`` and its search ``value``, the ranges its
    rounds searched (``ranges``: list of (low, high)), its edge, and the finals' searched metric
    at that rate over finished seeds (``finals_mean``, ``finals_sd``, ``finals_n``)."""
    best = best_lr(folder).set_index("cell")
    saved = folder.cache.get(folder.dirs.best, _json) or {}
    fin = finals(folder)
    ok = finished(fin) if len(fin) else fin
    metric, exp = folder.exp.asha.metric, folder.exp
    rows = []
    for cell in exp.cells():
        b = best.loc[cell] if cell in best.index else None
        ranges = [(exp.search.lr_low, exp.search.lr_high)]
        extra = (saved.get(cell) or {}).get("range")
        if extra and tuple(extra) not in ranges:
            ranges.append(tuple(extra))
        vals = (ok.loc[ok.cell == cell, metric].astype(float)
                if len(ok) and metric in ok else pd.Series(dtype=float))
        vals = vals[vals.map(is_finite)]
        rows.append({"cell": cell, "lr": None if b is None else b["best lr"],
                     "value": None if b is None else b["value"],
                     "final": False if b is None else bool(b["final"]),
                     "edge": None if b is None else b["at_edge"], "ranges": ranges,
                     "finals_mean": vals.mean() if len(vals) else math.nan,
                     "finals_sd": vals.std(ddof=1) if len(vals) > 1 else math.nan,
                     "finals_n": len(vals)})
    return pd.DataFrame(rows)


def rate_map(folder: Folder) -> pd.DataFrame:
    """The rate map's table (:func:`tuner.service.report.lr_map.table`): the service's choice
    once ``search_best.json`` exists, the best complete trial so far until then."""
    from tuner.service.report import lr_map

    saved = folder.cache.get(folder.dirs.best, _json)
    if saved is None:
        saved = {r.cell: {"lr": r.lr, "at_edge": None} for r in chosen(folder).itertuples()
                 if r.lr is not None and is_finite(r.lr)}
    return lr_map.table(folder.exp.grid, folder.exp.cells(), saved)


# ------------------------------------------------------------------------------ cost
def cost(folder: Folder) -> pd.DataFrame:
    """Per stage (search, finals, total): the pilot's projection (``pilot.json``) and the
    last run's wall time (``times.json``, written by the CLI as each stage ends); NaN where
    either is missing (no pilot ran, the stage has not ended)."""
    pilot = folder.cache.get(folder.dirs.pilot, _json) or {}
    projected = pilot.get("projection", {}).get("current", {})
    actual = folder.cache.get(folder.dirs.times, _json) or {}
    return pd.DataFrame([{"stage": key[:-2], "projected_s": projected.get(key, math.nan),
                          "actual_s": actual.get(key, math.nan)}
                         for key in ("search_s", "finals_s", "total_s")])


def timeline(folder: Folder) -> pd.DataFrame:
    """One row per Tune trial (search rounds and finals): its ``start`` and ``end`` in seconds
    since the experiment's first trial started, from Tune's ``result.json`` (``timestamp`` of
    each report; the first report's ``time_this_iter_s`` back to the trial's start), and its
    ``state`` (the search trial's study state; ``final`` for finals)."""
    states = search_trials(folder).dropna(subset=["tune_trial_id"])
    kind_of = {str(t.tune_trial_id): _kind(t.state, t.diverged)
               for t in states.itertuples(index=False)}
    rows = []
    for rnd, trial in _trial_folders(folder, (*folder.dirs.search_rounds(), "finals")):
        params = folder.cache.get(trial / "params.json", _json) or {}
        results = folder.cache.get(trial / "result.json", _json_lines) or []
        if not results or "timestamp" not in results[0]:
            continue
        spec = TrialSpec.of(params)
        tid = str(results[0].get("trial_id", ""))
        start = results[0]["timestamp"] - float(results[0].get("time_this_iter_s") or 0)
        lrs = [m.lr for m in spec.members]
        rows.append({"round": rnd, "cell": ",".join(spec.cells),
                     "lr": lrs[0] if len(lrs) == 1 else math.nan,
                     "trial": tid, "start": start, "end": float(results[-1]["timestamp"]),
                     "state": "final" if rnd == "finals" else kind_of.get(tid, "running")})
    out = pd.DataFrame(rows, columns=["round", "cell", "lr", "trial", "start", "end", "state"])
    if len(out):
        t0 = out.start.min()
        out["start"], out["end"] = out.start - t0, out.end - t0
    return out.sort_values("start", ignore_index=True)


# ------------------------------------------------------------------------------ curves
def curves(folder: Folder) -> pd.DataFrame:
    """Every evaluation of every trial, one row per (trial, seed, step).

    Columns: ``stage`` (search | final), ``cell``, ``lr``, ``trial`` (a label), ``seed`` (finals
    only), ``state`` (the search trial's, from :func:`search_trials`), ``step`` and one column
    per metric. A finals trial trains every seed of a cell at once and reports each seed's
    metrics as ``seed_<s>/<metric>``; it is split into one curve per seed.
    """
    states = search_trials(folder).dropna(subset=["tune_trial_id"])
    state_of = {(str(t.tune_trial_id), t.cell, t.number): t.state
                for t in states.itertuples(index=False)}
    number_of = dict(zip(states.tune_trial_id.astype(str), states.number, strict=False))
    frames = []
    for rnd, trial in _trial_folders(folder, tuple(folder.dirs.search_rounds())):
        params = folder.cache.get(trial / "params.json", _json)
        results = folder.cache.get(trial / "result.json", _json_lines) or []
        if not params or not results:
            continue
        tid, spec = str(results[0].get("trial_id", "")), TrialSpec.of(params)
        for j, m in enumerate(spec.members):  # a population: one curve per member
            own = ([part(r, member_key(j, "")) for r in results if member_key(j, "step") in r]
                   if spec.is_population else results)
            number = m.number if spec.is_population else number_of.get(tid)
            if not own:
                continue
            frames.append(pd.DataFrame([_metrics(r) for r in own]).assign(
                stage="search", round=rnd, cell=m.cell, lr=m.lr,
                trial=f"#{number if number is not None else tid} lr={m.lr:.3g}",
                seed=math.nan,
                state=state_of.get((tid, m.cell, number), "RUNNING")))
    for spec, _, results in _finals_trials(folder):
        for i, m in enumerate(spec.members):  # one cell's seeds, or a shared program's
            rows = [{"step": r["step"], **_metrics(part(r, spec.prefix(i)))} for r in results]
            frames.append(pd.DataFrame(rows).assign(
                stage="final", round="finals", cell=m.cell, lr=m.lr,
                trial=f"seed {m.seed}", seed=m.seed, state="final"))
    if not frames:
        return pd.DataFrame(columns=["stage", "round", "cell", "lr", "trial", "seed", "state",
                                     "step"])
    return pd.concat(frames, ignore_index=True)


def curve_metrics(folder: Folder, table: pd.DataFrame) -> list[str]:
    """The metrics of ``table`` that have a curve over steps (the searched one first); the
    once-only values after training (rollout scores) are left to :func:`rollouts`."""
    prefixes = [] if folder.curve is None else [folder.curve["prefix"], folder.curve["se_prefix"]]
    names = [c for c in table.columns if (c.startswith("eval/") or c in _CURVE_EXTRA)
             and not any(c.startswith(p) for p in prefixes) and table[c].notna().any()]
    return sorted(names, key=lambda c: (c != folder.exp.asha.metric, not c.startswith("eval/"), c))


def log_scale_fits(values: pd.Series) -> bool:
    """A log axis where a metric is positive and spans a decade or more (losses, nmse)."""
    v = pd.to_numeric(values, errors="coerce")
    v = v[v.map(is_finite)]
    return bool(len(v)) and bool((v > 0).all()) and v.max() / v.min() >= 10


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items()
            if (k == "step" or k.startswith("eval/") or k in _CURVE_EXTRA)
            and isinstance(v, int | float) and not isinstance(v, bool)}


# ------------------------------------------------------------------------------ finals
def _finals_trials(folder: Folder) -> list[tuple[TrialSpec, dict[str, Any], list[dict]]]:
    """Each finals trial that has reported: its spec, its config, its results."""
    out = []
    for _, trial in _trial_folders(folder, ("finals",)):
        params = folder.cache.get(trial / "params.json", _json) or {}
        results = folder.cache.get(trial / "result.json", _json_lines) or []
        if "final" in params and results:
            out.append((TrialSpec.of(params), params, results))
    return out


def finals(folder: Folder) -> pd.DataFrame:
    """One row per final seed: ``finals.json`` once written, until then each finals trial's
    latest report (its seed's metrics so far; ``step`` says how far it got)."""
    saved = folder.cache.get(folder.dirs.finals, _json)
    if saved is not None:
        return pd.DataFrame(saved)
    rows = []
    for spec, params, results in _finals_trials(folder):
        for i, m in enumerate(spec.members):
            own = part(results[-1], spec.prefix(i))
            rows.append({"cell": m.cell, "seed": m.seed, "lr": m.lr,
                         **overrides(params, m.cell),
                         "step": own.get("step", results[-1]["step"]),
                         **{k: v for k, v in own.items()
                            if k.startswith("eval/") or k in ("train_loss", "diverged")}})
    return pd.DataFrame(rows)


def rollouts(folder: Folder, cell: str) -> pd.DataFrame:
    """The task's curve after training for one cell (LDS: score per rollout horizon), one row
    per (seed, x) with ``value`` and its Monte-Carlo ``se``; empty before the finals end."""
    curve, fin = folder.curve, finals(folder)
    if curve is None or not len(fin):
        return pd.DataFrame(columns=["seed", "x", "value", "se"])
    ok = finished(fin)
    ok = ok[ok.cell == cell]
    rows = []
    for col in (c for c in ok.columns if c.startswith(curve["prefix"])):
        x = int(col[len(curve["prefix"]):])
        se_col = curve["se_prefix"] + col[len(curve["prefix"]):]
        for _, r in ok.iterrows():
            if is_finite(r[col]):
                rows.append({"seed": int(r["seed"]), "x": x, "value": float(r[col]),
                             "se": float(r[se_col]) if se_col in r else math.nan})
    return pd.DataFrame(rows, columns=["seed", "x", "value", "se"]).sort_values(["seed", "x"])


# ------------------------------------------------------------------------------ report
def claims(folder: Folder) -> list[dict[str, Any]]:
    """Per claim of the file: its text, metrics, the verdict line of ``report/summary.md`` and
    the path of its plot (``report/claim<i>.png``); both None until the report is written."""
    summary = folder.cache.get(folder.dirs.summary, Path.read_text) or ""
    verdict_part = summary.split("## Verdict", 1)[-1] if "## Verdict" in summary else ""
    lines = {int(m.group(1)): m.group(2) for m in re.finditer(r"^(\d+)\. (.+)$", verdict_part,
                                                               re.MULTILINE)}
    out = []
    for i, claim in enumerate(folder.exp.claims, start=1):
        png = folder.dirs.claim_plot(i)
        out.append({"text": claim.text, "kind": claim.kind,
                    "metrics": list(claim.metrics) or [folder.exp.asha.metric],
                    "verdict": lines.get(i), "plot": png if png.exists() else None})
    return out


def summary(folder: Folder) -> str | None:
    """``report/summary.md``, None until the experiment has finished."""
    return folder.cache.get(folder.dirs.summary, Path.read_text)


# ------------------------------------------------------------------------------ comparison
def compare(folders: list[Folder], metric: str) -> pd.DataFrame:
    """One row per (experiment, cell): its grid values, best lr and the finals' ``metric``
    (mean, sd, n over finished seeds); a row per cell also while its finals are pending."""
    rows = []
    for folder in folders:
        best = best_lr(folder).set_index("cell")
        fin = finals(folder)
        ok = finished(fin) if len(fin) else fin
        for cell, over in folder.exp.cells().items():
            vals = (ok.loc[ok.cell == cell, metric].astype(float)
                    if metric in ok else pd.Series(dtype=float))
            vals = vals[vals.map(is_finite)]
            rows.append({"experiment": folder.label, "cell": cell, **over,
                         "best lr": best["best lr"].get(cell) if len(best) else None,
                         "mean": vals.mean() if len(vals) else math.nan,
                         "sd": vals.std(ddof=1) if len(vals) > 1 else math.nan,
                         "n": len(vals)})
    return pd.DataFrame(rows)



def _mean_sd(vals: pd.Series) -> str:
    vals = vals.astype(float)
    vals = vals[vals.map(is_finite)]
    if not len(vals):
        return "n/a"
    return f"{vals.mean():.4g} ± " + (f"{vals.std(ddof=1):.2g}" if len(vals) > 1 else "n/a")
