"""Rung schedules replayed on the dense ground truths (no training): members per cell, first
rung and reduction factor, each with the survivor pick and the shipped fitted pick, at compute
<= 0.12 of the dense grid (issue 33's bound).

    uv run python -m bench.search_quality.schedules

The schedules keep 2 rates to a later rung (8 -> 4 -> 2 -> 1, 3 to 6 members with a later
first rung) or start later with fewer members; the compute is the replay's own count (member
steps over a 16-rate grid's, divergence included), as ``landscapes``'s table. Which schedule
would be chosen is read on landscape_low (the others are held out), as the pick's defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.search_quality import replay
from bench.search_quality.landscapes import HERE, load_cells, near, truth_path
from tuner.service import experiment
from tuner.service.search import pick

# (members, first rung as a share of the budget, reduction factor): rungs at share * rf^k
SCHEDULES = [(8, 0.05, 3), (8, 0.05, 2), (8, 0.05, 4), (7, 0.1, 4), (6, 0.05, 2), (6, 0.05, 3),
             (6, 0.1, 2), (6, 0.1, 3), (6, 0.1, 4), (5, 0.1, 2), (5, 0.1, 3), (5, 0.15, 3),
             (4, 0.1, 2), (4, 0.15, 2), (4, 0.15, 3), (4, 0.2, 2), (4, 0.25, 2), (3, 0.25, 2),
             (3, 0.3, 2)]
NAMES = ["landscape_low", "landscape_wide", "landscape_deep", "landscape_patch8",
         "landscape_top"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=NAMES)
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--out", default="out/search_quality")
    args = ap.parse_args()
    grids = {}
    for name in args.names:
        exp = experiment.load(str(HERE / f"{name}.yaml"))
        path = truth_path(Path(args.out), name, 12)
        if path.exists():
            cells = load_cells(path, exp)
            grids[name] = (list(cells.values()), near(exp, cells))
    fit = {"keep": pick.KEEP, "shift": pick.SHIFT}
    print("| members, first rung, rf | pick | compute | "
          + " | ".join(f"{n} mean / worst" for n in grids) + " |")
    print("|---" * (3 + len(grids)) + "|")
    for k, share, rf in SCHEDULES:
        for label, f in (("survivor", None), ("pooled fit", fit)):
            row, compute = [], []
            for cells, nb in grids.values():
                got = np.array([replay.population(cells, d, f, pooled=True, k=k,
                                                  grace_share=share, rf=rf, near=nb)
                                for d in range(args.draws)])
                per_cell = got[:, :, 0].mean(0)
                compute.append(got[:, :, 1].mean())
                row.append(f"{per_cell.mean():.2%} / {per_cell.max():.2%}")
            over = " (over 0.12)" if max(compute) > 0.12 + 1e-9 else ""
            print(f"| {k}, {share:.0%}, {rf:g} | {label} | {max(compute):.3f}{over} | "
                  + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
