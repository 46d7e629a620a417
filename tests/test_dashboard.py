"""A running experiment as a cluster's own tools see it: trial actors named in Ray's state API
(what the dashboard's Actors page shows as "Repr") and the service's gauges on Ray's Prometheus
endpoint.

One real local cluster is started here with a known metrics port; the tiny experiment's driver
(``python -m tuner.run ... --address``) joins it, runs for a while and is stopped with SIGTERM
(the CLI's clean stop), so the test costs a part of the search, not a whole experiment. Dead
actors stay in the GCS's table, so every trial that ran is listed after the stop.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tuner.service import service_metrics, trial_names

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

EXPERIMENT = "tiny"  # tests/fixtures/tiny.yaml's name (its folder's name)
MAX_CONCURRENT = 1  # tiny.yaml: search.max_concurrent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of this process (dashboard for the state API, metrics on a known
    port); (its GCS address, the metrics URL)."""
    import ray

    port = _free_port()
    ctx = ray.init(address="local", num_cpus=2, include_dashboard=True,
                   dashboard_host="127.0.0.1", _metrics_export_port=port)
    try:
        yield ctx.address_info["gcs_address"], \
            f"http://{ctx.address_info['node_ip_address']}:{port}/metrics", \
            f"http://{ctx.dashboard_url}"
    finally:
        ray.shutdown()


def _samples(url: str) -> list:
    """Every sample of the service's gauges on Ray's metrics endpoint (Prometheus text)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    except OSError:
        return []
    names = {f"ray_{service_metrics.TRIALS}", f"ray_{service_metrics.BEST}"}
    return [s for fam in text_string_to_metric_families(text) if fam.name in names
            for s in fam.samples if s.labels.get("experiment") == EXPERIMENT]


def _trial_actors(dashboard: str) -> list:
    """The trial actors in the dashboard's state API (what its Actors page lists). Asked at
    the dashboard's own address: without one, the client looks the cluster up from
    ``/tmp/ray/ray_current_cluster``, which names the last cluster started on the machine,
    not necessarily this one (earlier test modules start and stop their own)."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, detail=True, limit=10_000,
                         raise_on_missing_output=False, timeout=60)
    # Ray names the class by its qualified name: tune.with_resources' subclass of ours
    return [a for a in actors
            if a.class_name.split(".")[-1] in ("ResourceTrainable", "train_trial",
                                               "_final_trial")]


def _actors_page(dashboard: str, tmp_path: Path) -> None:
    """The dashboard's Actors page in headless Chromium (logged in with the cluster's token,
    where token authentication is on): a running trial is listed by its name. The screenshot
    goes to ``test-artifacts/dashboard-actors.png``."""
    from test_view import ROOT, _chrome, _wait

    token = Path.home() / ".ray" / "auth_token"  # where Ray keeps a local cluster's token
    driver = _chrome()
    try:
        driver.get(f"{dashboard}/api/version")  # on the site (a cookie needs it), not the app
        if token.exists():
            driver.add_cookie({"name": "ray-authentication-token",
                               "value": token.read_text().strip()})
        driver.get(f"{dashboard}/#/actors")  # the app loads with the cookie set
        text = _wait(lambda: f"{EXPERIMENT} search patch=" in driver.find_element(
            "tag name", "body").text, timeout=60)
        shot = driver.get_screenshot_as_png()
        body = driver.find_element("tag name", "body").text
    finally:
        driver.quit()
    (tmp_path / "dashboard-actors.png").write_bytes(shot)
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "dashboard-actors.png").write_bytes(shot)
    assert text, f"no trial named on the dashboard's Actors page: {body[:2000]}"


def _reported(folder: Path) -> dict[str, list[float]]:
    """Cell -> every finite ``eval/nmse`` its search trials reported (their result.json)."""
    out: dict[str, list[float]] = {}
    for result in (folder / "search").glob("*/result.json"):
        for line in result.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            v = r.get("eval/nmse")
            if isinstance(v, float) and math.isfinite(v):
                out.setdefault(r["config"]["cell"], []).append(v)
    return out


def test_running_trials_are_named_and_measured(cluster, tmp_path, monkeypatch):
    from tiny_run import cli

    from tuner.service.stages import REUSE_ENV

    monkeypatch.delenv(REUSE_ENV, raising=False)  # the default: one actor per trial
    address, metrics_url, dashboard = cluster
    log = tmp_path / "driver.log"
    proc = cli(tmp_path, "--address", address, "--no-wandb", log=log)
    seen: list = []
    try:
        deadline = time.monotonic() + 240
        # the metrics agent exports every few seconds: wait for a best value and for three
        # actors, so that trials have come and gone
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            samples = _samples(metrics_url)
            best = [s for s in samples if s.name == f"ray_{service_metrics.BEST}"]
            if best and len(_trial_actors(dashboard)) >= 3:
                seen = samples
                break
            time.sleep(2)
        assert seen, f"no gauges of {EXPERIMENT} on {metrics_url}: {log.read_text()[-3000:]}"
        if CHROMIUM and CHROMEDRIVER:  # the dashboard's own page, as a user opens it
            _actors_page(dashboard, tmp_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)

    folder = tmp_path / EXPERIMENT
    # the dashboard's Actors table: one actor per trial, named by what the trial trains
    # trials that reported (their actor's __init__ had ended, so Ray had taken its name; Tune
    # writes params.json before that, and the stop may land inside an actor's __init__)
    params = [json.loads(p.read_text()) for p in (folder / "search").glob("*/params.json")
              if (p.parent / "result.json").exists()
              and (p.parent / "result.json").read_text().strip()]
    assert len(params) >= 2  # 3 actors were seen
    names = sorted(a.repr_name for a in _trial_actors(dashboard) if a.repr_name)
    want = sorted(trial_names.label(p, EXPERIMENT) for p in params)
    assert set(want) <= set(names), (want, names)  # every trial found by its name
    assert len(names) >= len(want)  # no actor was reused for a second trial under a stale name
    # a slow machine may reach the finals before the stop: their actors are named too
    assert all((n.startswith(f"{EXPERIMENT} search patch=") and " lr=" in n)
               or (n.startswith(f"{EXPERIMENT} final patch=") and " seeds=" in n)
               for n in names), names

    # the gauges: counts bounded by what ran, the best value one that a trial of the cell reported
    reported = _reported(folder)
    running = [s.value for s in seen if s.name.endswith("_trials") and s.labels["state"]
               == "running"]
    assert running and sum(running) <= MAX_CONCURRENT
    for s in seen:
        assert s.labels["stage"] == "search" and s.labels["cell"] in ("patch=1", "patch=4")
        if s.name.endswith("_trials") and s.labels["state"] == "finished":
            assert s.value <= sum(p["cell"] == s.labels["cell"] for p in params)
        if s.name == f"ray_{service_metrics.BEST}":
            # the gauge is a float64 printed by Prometheus' text format: equal to a reported
            # value up to that printing (relative 1e-9)
            assert any(math.isclose(s.value, v, rel_tol=1e-9)
                       for v in reported[s.labels["cell"]]), (s, reported)
            assert s.labels["metric"] == "eval/nmse"
