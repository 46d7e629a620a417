"""The experiment viewer (``tuner.view``) on a folder the real service wrote.

The suite's tiny experiment (``tests/fixtures/tiny.yaml``) runs once a session through
``python -m tuner.run`` (``conftest.tiny_reference``, shared with the service tests); the data
layer is checked against its result files, and against the same folder without the files a
stage writes only when it ends (what a running experiment holds); the page is loaded in
headless Chromium, a cell is picked and the drawn curve checked in Bokeh's document and on the
canvas. The screenshot lands in the test's ``tmp_path`` and in ``test-artifacts/viewer.png``
(git-ignored).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tuner.service.trial_spec import TrialSpec
from tuner.view import load

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny.yaml"
TRIALS_PER_CELL = yaml.safe_load(TINY.read_text())["search"]["trials_per_cell"]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
STAGE_FILES = ("search_trials.csv", "search_best.json", "finals.json", "report")

# the fixture runs the service (a local Ray cluster)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tiny_reference) -> Path:
    """The folder ``python -m tuner.run`` wrote for the tiny experiment (the session's shared
    run, ``conftest.tiny_reference``; read only)."""
    return tiny_reference[0]


@pytest.fixture(scope="module")
def running(folder, tmp_path_factory) -> Path:
    """The same folder as it stands before its stages end: without the files a stage writes
    only once all of its trials have ended (journals, trial folders, status.json stay)."""
    copy = tmp_path_factory.mktemp("running") / "tiny"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("jax_cache", "checkpoint_*"))
    for name in STAGE_FILES:
        p = copy / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return copy


def test_reads_a_finished_experiment(folder):
    f = load.open_folder(folder)
    best = json.loads((folder / "search_best.json").read_text())
    finals = pd.DataFrame(json.loads((folder / "finals.json").read_text()))
    trials = pd.read_csv(folder / "search_trials.csv")
    assert load.stage(f) == "done"

    grid = load.cells(f).set_index("cell")
    assert list(grid.index) == ["patch=1", "patch=4"]
    for cell, b in best.items():
        assert grid.loc[cell, "best lr"] == b["lr"] and grid.loc[cell, "chosen"] == "yes"
        counts = [int(n) for n in
                  grid.loc[cell, "trials (done/pruned/diverged/failed/running)"].split("/")]
        assert sum(counts) == TRIALS_PER_CELL

    curves = load.curves(f)
    search = curves[curves.stage == "search"]
    assert search.groupby("trial").ngroups == len(trials)  # one curve per search trial
    for _, t in trials.iterrows():  # each curve ends where its journal says the trial stopped
        run = search[search.trial.str.startswith(f"#{t.number} ") & (search.cell == t.cell)]
        assert run.step.max() == t.last_step and (run.state == t.state).all()
    last = curves[(curves.stage == "final")].sort_values("step").groupby(["cell", "seed"]).last()
    for _, r in finals.iterrows():  # the finals' curves end at the values finals.json holds
        assert last.loc[(r.cell, r.seed), "eval/nmse"] == pytest.approx(r["eval/nmse"])
    assert load.curve_metrics(f, curves)[0] == "eval/nmse"
    assert not any(m.startswith("eval/score") for m in load.curve_metrics(f, curves))

    roll = load.rollouts(f, "patch=4")
    assert sorted(roll.x.unique()) == [1, 4, 16] and sorted(roll.seed.unique()) == [0, 1]
    row = finals[(finals.cell == "patch=4") & (finals.seed == 1)].iloc[0]
    assert roll[(roll.seed == 1) & (roll.x == 16)].value.item() == pytest.approx(
        row["eval/score_t+16"])

    (claim,) = load.claims(f)
    assert claim["text"] == "nmse grows with the patch size"
    assert claim["verdict"].startswith("**nmse grows") and claim["plot"].is_file()
    assert "## Verdict" in load.summary(f)


def test_reads_a_running_experiment(folder, running):
    """Without the stage result files the journals and trial folders give the same tables."""
    done, live = load.open_folder(folder), load.open_folder(running)
    assert load.stage(live) == "search"
    cols = ["cell", "number", "lr", "state", "last_step", "diverged", "tune_trial_id"]
    pd.testing.assert_frame_equal(load.search_trials(live)[cols],
                                  load.search_trials(done)[cols], check_dtype=False)
    best, so_far = load.best_lr(done).set_index("cell"), load.best_lr(live).set_index("cell")
    assert (so_far["best lr"] == best["best lr"]).all() and not so_far["final"].any()
    metrics = ["eval/nmse", "eval/skill_info", "eval/score_t+16", "step"]
    pd.testing.assert_frame_equal(load.finals(live)[["cell", "seed", *metrics]],
                                  load.finals(done)[["cell", "seed", *metrics]])
    assert load.claims(live)[0]["verdict"] is None and load.summary(live) is None

    # a trial writing its next line: the half line is skipped, the rest still read
    result = next((running / "search").glob("*/result.json"))
    before = len(load.curves(live))
    with result.open("a") as fh:
        fh.write('{"step": 80, "eval/nm')
    assert len(load.curves(live)) == before


def test_page_follows_a_running_experiment(running, tmp_path):
    """A finals trial folder that appears (as Tune creates it) shows up at the next re-read,
    with no reload of the page."""
    from tuner.view.app import Viewer

    trial = next(p for p in (running / "finals").iterdir() if (p / "params.json").exists())
    cell = TrialSpec.of(json.loads((trial / "params.json").read_text())).cells[0]
    shutil.move(trial, tmp_path / trial.name)
    viewer = Viewer(load.find_folders([running]), refresh_s=0)
    viewer.cells.value = [cell]

    def lines() -> list[str]:
        return [r.name for r in viewer.curve_pane.object.renderers if "final" in (r.name or "")]

    assert lines() == []
    shutil.move(tmp_path / trial.name, trial)
    viewer.refresh()
    assert lines() == [f"curve final {cell} seed 0", f"curve final {cell} seed 1"]


def _kind(row) -> str:
    """How a search trial ended, from ``report/trials.csv`` alone (the viewer's markers)."""
    if str(row.diverged) == "True":
        return "diverged"
    return {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[row.state]


def test_reads_rates_map_and_cost(folder, running):
    """The learning-rate, rate-map and cost tables against the files the service wrote, for
    the finished folder and for the running copy (journals and trial folders only)."""
    trials = pd.read_csv(folder / "report" / "trials.csv")
    search = trials[trials.stage == "search"]
    best = json.loads((folder / "search_best.json").read_text())
    finals = pd.DataFrame(json.loads((folder / "finals.json").read_text()))
    done, live = load.open_folder(folder), load.open_folder(running)

    rates = load.landscape(done)
    assert len(rates) == len(search)
    merged = rates.merge(search, on=["cell", "number"], suffixes=("", "_csv"))
    assert len(merged) == len(search)
    assert (merged.kind == merged.apply(_kind, axis=1)).all()
    finite = merged[merged.kind.isin(["complete", "pruned"])]  # a value at the rung reached
    assert finite.value.tolist() == pytest.approx(finite.value_csv.tolist(), rel=1e-9)
    assert merged[~merged.kind.isin(["complete", "pruned"])].value.isna().all()
    cols = ["cell", "number", "lr", "kind", "value"]
    pd.testing.assert_frame_equal(load.landscape(live)[cols], rates[cols], check_dtype=False)

    picks = load.chosen(done).set_index("cell")
    for cell, b in best.items():
        assert picks.loc[cell, "lr"] == b["lr"] and picks.loc[cell, "final"]
        assert picks.loc[cell, "ranges"] == [tuple(b["range"])]
        of = finals[finals.cell == cell]["eval/nmse"]
        assert picks.loc[cell, "finals_mean"] == pytest.approx(of.mean(), rel=1e-9)
        assert picks.loc[cell, "finals_sd"] == pytest.approx(of.std(ddof=1), rel=1e-9)
    so_far = load.chosen(live).set_index("cell")
    assert not so_far.final.any() and (so_far.lr == picks.lr).all()  # best complete = chosen

    table = load.rate_map(done).set_index("cell")
    assert {c: table.loc[c, "lr"] for c in best} == {c: b["lr"] for c, b in best.items()}
    assert table.loc["patch=4", "model.patch_size"] == 4
    assert (folder / "report" / "lr_map.png").stat().st_size > 10_000
    assert "`lr_map.png`" in (folder / "report" / "summary.md").read_text()

    cost = load.cost(done).set_index("stage")
    times = json.loads((folder / "times.json").read_text())
    pilot = json.loads((folder / "pilot.json").read_text())["projection"]["current"]
    for stage in ("search", "finals", "total"):
        assert cost.loc[stage, "actual_s"] == times[f"{stage}_s"]
        assert cost.loc[stage, "projected_s"] == pilot[f"{stage}_s"]
    spans = load.timeline(done)  # one bar per member: a search trial's rate, a final seed
    n_final = len(json.loads((folder / "finals.json").read_text()))
    assert len(spans) == len(search) + n_final
    assert (spans.start >= 0).all() and (spans.end >= spans.start - 1).all()  # 1 s: Tune's
    # timestamps are whole seconds, the start is a float (timestamp - time_this_iter_s)
    assert sorted(spans[spans.state != "final"].state) == sorted(search.apply(_kind, axis=1))


def test_log_axis_where_a_positive_metric_spans_a_decade():
    assert load.log_scale_fits(pd.Series([0.02, 0.5, 1.3]))
    assert not load.log_scale_fits(pd.Series([1.05, 1.3, 2.0]))  # less than a decade
    assert not load.log_scale_fits(pd.Series([-0.5, 0.01, 3.0]))  # a skill can be negative
    assert not load.log_scale_fits(pd.Series([math.nan, math.nan]))


def test_compares_experiments(folder, tmp_path):
    other = tmp_path / "tiny-again"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns("jax_cache", "checkpoint_*"))
    folders = load.find_folders([folder.parent, other])
    table = load.compare(folders, "eval/nmse_info")
    assert list(table.experiment) == ["tiny", "tiny", "tiny-again", "tiny-again"]
    assert (table.n == 2).all() and table["mean"].map(math.isfinite).all()


def test_not_an_experiment_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tuner.view", str(tmp_path), "--no-show"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {tmp_path}: no experiment folder here")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    where = re.escape(str(tmp_path))
    with pytest.raises(load.NotAnExperiment, match=f"^{where}/nothing: no such folder$"):
        load.find_folders([tmp_path / "nothing"])
    (tmp_path / "experiment.yaml").write_text("name: [\n")
    with pytest.raises(load.NotAnExperiment, match=f"^{where}: its experiment.yaml does not"):
        load.open_folder(tmp_path)


# ------------------------------------------------------------------------------ the browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def viewer(folder, running):
    """``python -m tuner.view`` serving the finished and the running copy; yields its URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuner.view", str(folder), str(running),
                             "--port", str(port), "--no-show", "--refresh-s", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1100",
                f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


# every element of the page through Bokeh's shadow roots
DEEP = """
const out = [];
const walk = (root) => { for (const el of root.querySelectorAll('*')) {
    if (el.matches(arguments[0])) out.push(el);
    if (el.shadowRoot) walk(el.shadowRoot); } };
walk(document);
return out;
"""

# (renderer name, number of x values, y values) of every line of the figure named arguments[0]
# that the page shows now (a view of it exists: a replaced figure has none)
LINES = """
if (typeof Bokeh === 'undefined' || !Bokeh.index.all_views) return null;
const figs = [...Bokeh.index.all_views()].map(v => v.model)
    .filter(m => m.type === 'Figure' && m.name === arguments[0]);
if (figs.length !== 1) return null;
const fig = figs[0];
return fig.renderers.filter(r => r.glyph && r.glyph.type === 'Line').map(r => {
    const d = r.data_source.data;
    const x = d instanceof Map ? d.get(r.glyph.x.field) : d[r.glyph.x.field];
    const y = d instanceof Map ? d.get(r.glyph.y.field) : d[r.glyph.y.field];
    return [r.name, x.length, Array.from(y)];
});
"""


def _wait(fn, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _orange_pixels(png: bytes) -> int:
    """Pixels of Category10's second colour (the second cell's curves)."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(rgb - [0xff, 0x7f, 0x0e]).sum(axis=-1) < 40).sum())


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver not "
                    "installed (apt-get install chromium chromium-driver; .ci/run does)")
def test_browser_draws_the_picked_cell(viewer, folder, tmp_path):
    from selenium.webdriver.support.ui import Select

    finals = pd.DataFrame(json.loads((folder / "finals.json").read_text()))
    trials = pd.read_csv(folder / "search_trials.csv")
    n_trials = int(((trials.cell == "patch=4") & ~trials.diverged).sum())  # NaN: nothing drawn
    driver = _chrome()
    try:
        driver.get(viewer)
        assert _wait(lambda: driver.execute_script(LINES, "curves")), "no curves figure"
        before = _orange_pixels(driver.get_screenshot_as_png())

        # pick the second cell in the cells list, as a user does
        (cells,) = [e for e in driver.execute_script(DEEP, "select[multiple]")]
        picker = Select(cells)
        picker.deselect_all()
        picker.select_by_visible_text("patch=4")
        lines = _wait(lambda: [ln for ln in driver.execute_script(LINES, "curves") or []
                               if "patch=4" in ln[0]])
        names = [ln[0] for ln in driver.execute_script(LINES, "curves")]
        assert len(lines) == n_trials + 2 == len(names), names  # its search runs + 2 final seeds
        assert all(n > 0 for _, n, _ in lines)
        time.sleep(0.5)  # the canvas repaints after the document changes
        shot = driver.get_screenshot_as_png()
        assert before < 50 < _orange_pixels(shot), (before, _orange_pixels(shot))

        # the rollouts, one cell at a time: the picked cell's mean over seeds
        (tab,) = [e for e in driver.execute_script(DEEP, ".bk-tab") if e.text == "Rollouts"]
        tab.click()
        (single,) = [e for e in driver.execute_script(DEEP, "select:not([multiple])")
                     if "patch=4" in e.text and "tiny" not in e.text]
        Select(single).select_by_visible_text("patch=4")
        want = finals[finals.cell == "patch=4"][["eval/score_t+1", "eval/score_t+4",
                                                 "eval/score_t+16"]].mean().to_list()
        mean = _wait(lambda: [ln for ln in driver.execute_script(LINES, "rollouts") or []
                              if ln[0] == "rollout_mean" and ln[2] == pytest.approx(want)])
        assert mean, driver.execute_script(LINES, "rollouts")
        time.sleep(0.5)
        rollout_shot = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    for name, png in (("viewer.png", shot), ("viewer-rollouts.png", rollout_shot)):
        (tmp_path / name).write_bytes(png)
        (artifacts / name).write_bytes(png)
    print(f"screenshots: {tmp_path / 'viewer.png'}, {artifacts / 'viewer.png'}")


# (renderer name, glyph type, its data source's columns) of the figure named arguments[0]
DATA = """
if (typeof Bokeh === 'undefined' || !Bokeh.index.all_views) return null;
const figs = [...Bokeh.index.all_views()].map(v => v.model)
    .filter(m => m.type === 'Figure' && m.name === arguments[0]);
if (figs.length !== 1) return null;
return figs[0].renderers.filter(r => r.data_source).map(r => {
    const d = r.data_source.data, out = {};
    for (const k of (d instanceof Map ? [...d.keys()] : Object.keys(d)))
        out[k] = Array.from(d instanceof Map ? d.get(k) : d[k]);
    return [r.name, r.glyph.type, out];
});
"""


def _tab(driver, title: str) -> None:
    (tab,) = [e for e in driver.execute_script(DEEP, ".bk-tab") if e.text == title]
    tab.click()
    time.sleep(1.0)  # the canvas repaints after the tab shows


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver not "
                    "installed (apt-get install chromium chromium-driver; .ci/run does)")
def test_browser_draws_rates_map_and_cost(viewer, folder, tmp_path):
    """The new tabs as a user opens them: every search trial of ``report/trials.csv`` is a
    point of the learning-rate landscape at its rate (marker by how it ended), the star sits at
    the chosen rate, the finals' mean at it; the rate map's table holds the chosen rates; the
    cost tab shows the pilot's projection and this run's times and one bar per member."""
    trials = pd.read_csv(folder / "report" / "trials.csv")
    search = trials[trials.stage == "search"].assign(kind=lambda t: t.apply(_kind, axis=1))
    best = json.loads((folder / "search_best.json").read_text())
    finals = pd.DataFrame(json.loads((folder / "finals.json").read_text()))
    times = json.loads((folder / "times.json").read_text())
    driver = _chrome()
    shots = {}
    try:
        driver.get(viewer)
        assert _wait(lambda: driver.execute_script(LINES, "curves")), "no page"
        _tab(driver, "Learning rates")
        drawn = _wait(lambda: driver.execute_script(DATA, "landscape"))
        points = {name: data for name, glyph, data in drawn if glyph == "Scatter"}
        want = {f"landscape {c} {k}": sorted(g.lr) for (c, k), g in search.groupby(["cell",
                                                                                    "kind"])}
        got = {n: sorted(d["x"]) for n, d in points.items() if n.startswith("landscape ")}
        assert got.keys() == want.keys()
        for name, lrs in want.items():  # the rates drawn are the CSV's (JSON floats: exact
            assert got[name] == pytest.approx(lrs, rel=1e-12)  # up to the decimal round trip)
        for cell, b in best.items():
            assert points[f"chosen {cell}"]["x"] == pytest.approx([b["lr"]], rel=1e-12)
            nmse = finals[finals.cell == cell]["eval/nmse"]
            assert points[f"finals {cell}"]["y"] == pytest.approx([nmse.mean()], rel=1e-9)
        shots["viewer-rates.png"] = driver.get_screenshot_as_png()

        _tab(driver, "Rate map")
        texts = " ".join(e.text for e in driver.execute_script(DEEP, "table"))
        for b in best.values():
            assert f"{b['lr']:.3g}" in texts
        imgs = [e for e in driver.execute_script(DEEP, "img")
                if driver.execute_script("return arguments[0].naturalWidth", e) > 300]
        assert imgs, "no rate map image"
        shots["viewer-rate-map.png"] = driver.get_screenshot_as_png()

        _tab(driver, "Cost")
        bars = _wait(lambda: driver.execute_script(DATA, "cost"))
        actual = next(d for n, _, d in bars if n == "cost actual_s")
        assert actual["stage"] == ["search", "finals", "total"]
        assert actual["s"] == pytest.approx([times["search_s"], times["finals_s"],
                                             times["total_s"]], rel=1e-9)
        spans = _wait(lambda: driver.execute_script(DATA, "timeline"))
        n_final = len(json.loads((folder / "finals.json").read_text()))  # seeds
        assert sum(len(d["start"]) for _, _, d in spans) == len(search) + n_final
        shots["viewer-cost.png"] = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    for name, png in shots.items():
        (tmp_path / name).write_bytes(png)
        (artifacts / name).write_bytes(png)
