"""Search policies on several landscapes, replayed on their dense ground truths (CPU).

    python -m bench.search_quality.landscapes --compute landscape_deep   # one dense grid
    python -m bench.search_quality.landscapes                            # the tables

A landscape is an experiment file here (``grid.yaml``, ``landscape_*.yaml``); its dense ground
truth (``dense.py``: ``--rates`` log-spaced rates + the range's middle, the search run and the
finals' 3 seeds per rate, every evaluation kept) is cached as
``<out>/<name>/dense-<rates>.json`` (or read from
``bench/results/search_quality-<name>-dense-<rates>.json``, where the measured ones are kept)
and computed only with ``--compute`` (minutes of CPU per
cell: run it under ``flock /tmp/heavy.lock`` on the shared machine). ``grid.yaml``'s 16-rate
truth of issue 24 is read from ``<out>/dense-16.json`` where ``python -m bench.search_quality``
left it. The fitted pick's ``keep`` and ``shift`` are chosen on the ``--tune`` landscapes
(lowest mean regret) and the rest are reported as held out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from bench.search_quality import replay
from bench.search_quality.dense import dense
from tuner.service import experiment
from tuner.service.search import pick

HERE = Path(__file__).parent
STORED = HERE.parent / "results"  # dense truths kept with the repo (small JSON)
LANDSCAPES = ["grid", "landscape_deep", "landscape_low", "landscape_wide"]
KEEP = (4, 5, 6, 8)
SHIFT = (-0.6, -0.3, 0.0, 0.3)
FITTED = "population 8, fitted pick"


def truth_path(out: Path, name: str, rates: int) -> Path:
    """Where the landscape's dense truth is: stored under bench/results (reused, not
    recomputed), else the run's own ``out`` folder."""
    stored = STORED / f"search_quality-{name}-dense-{rates}.json"
    if stored.exists():
        return stored
    if name == "grid" and (out / "dense-16.json").exists():
        return out / "dense-16.json"
    return out / name / f"dense-{rates}.json"


def load_cells(path: Path, exp) -> dict[str, replay.Cell]:
    truth = json.loads(path.read_text())
    return {c: replay.Cell(truth["rates"], d, exp.max_t) for c, d in truth["cells"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=LANDSCAPES)
    ap.add_argument("--out", type=Path, default=Path("out/search_quality"))
    ap.add_argument("--rates", type=int, default=12)
    ap.add_argument("--compute", action="store_true", help="train missing dense grids")
    ap.add_argument("--tune", type=lambda v: [n for n in v.split(",") if n],
                    default=["landscape_low"], help="comma-separated landscapes to tune on")
    ap.add_argument("--draws", type=int, default=50)
    args = ap.parse_args()
    found = {}
    for name in args.names:
        exp = experiment.load(str(HERE / f"{name}.yaml"))
        path = truth_path(args.out, name, args.rates)
        if not path.exists() and args.compute:
            path.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            truth = dense(exp, args.rates)
            truth["wall_s"] = time.perf_counter() - started
            path.write_text(json.dumps(truth))
            print(f"{name}: dense grid in {truth['wall_s']:.0f} s", flush=True)
        if path.exists():
            found[name] = load_cells(path, exp)
        else:
            print(f"{name}: no dense ground truth at {path} (not run; flock /tmp/heavy.lock uv "
                  f"run python -m bench.search_quality.landscapes --compute {name})")
    tune = {n: c for n, c in found.items() if n in args.tune}
    best = {"keep": pick.KEEP, "shift": pick.SHIFT}
    if tune:
        scores = {}
        for keep, shift in itertools.product(KEEP, SHIFT):
            fit = {"keep": keep, "shift": shift}
            scores[keep, shift] = sum(replay.evaluate(cells, fit, args.draws, (FITTED,))[
                FITTED]["mean"] for cells in tune.values())
            print(f"tune keep={keep} shift={shift:+.1f}: mean regret "
                  f"{scores[keep, shift] / len(tune):.3%}", flush=True)
        keep, shift = min(scores, key=scores.get)
        best = {"keep": keep, "shift": shift}
    print(f"\nfitted pick: {best} (chosen on {sorted(tune) or 'none: the module defaults'})\n")
    print("| landscape | policy | mean regret | worst cell | compute (share of the dense grid) |")
    print("|---|---|---|---|---|")
    for name, cells in found.items():
        tag = "tuned on" if name in tune else "held out"
        for policy, r in replay.evaluate(cells, best, args.draws).items():
            print(f"| {name} ({tag}, {len(cells)} cells) | {policy} | {r['mean']:.2%} | "
                  f"{r['worst']:.2%} | {r['compute']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
