"""The zero predictor's scores with the project's generator: the table SPEC section 2 defers to.

    python -m bench.zero_predictor [--seeds 0 1 2] [--structure dense]

Exact expectations from the Kalman module (no sampling, CPU, seconds): per lambda and system
seed, the zero predictor's ``nmse`` (its error / the KF's, over y_2..y_T) and the learnable gap
``nmse - 1``; at patch 8 also ``nmse_info`` (against the KF that sees what a patch-8 model sees)
and the information cost of patching (``info_cost``). Prints a markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np

from data import kalman, lds

LAMBDAS = (0.36, 0.68, 0.84, 0.9, 0.92, 0.96, 0.98, 0.99)


def scores(cfg: lds.LDSConfig, patch: int) -> dict[str, float]:
    a, c = lds.make_system_np(cfg)
    system = lds.System(a, c, cfg.sigma)
    kf, zero = kalman.one_step_mse(system, cfg.seq_len), kalman.zero_mse(system, cfg.seq_len)
    info = kalman.patched_mse(system, cfg.seq_len, patch)
    k, z, i = (x[1:].sum() for x in (kf, zero, info))
    return {"nmse": z / k, "nmse_info": z / i, "info_cost": i / k}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--structure", default="dense")
    ap.add_argument("--patch", type=int, default=8)
    a = ap.parse_args()
    print(f"dim_x 64, dim_y 2, T 256, {a.structure}, system seeds {a.seeds}; patch {a.patch} "
          "for nmse_info / info_cost\n")
    print("| lambda | zero nmse (per seed) | zero nmse_info | info_cost |")
    print("|---|---|---|---|")
    for lam in LAMBDAS:
        rows = [scores(lds.LDSConfig(lambda_val=lam, structure=a.structure, system_seed=s),
                       a.patch) for s in a.seeds]
        col = lambda k, rows=rows: " / ".join(f"{r[k]:.4f}" for r in rows)  # noqa: E731
        spread = np.ptp([r["nmse"] for r in rows])
        print(f"| {lam} | {col('nmse')} (range {spread:.3f}) | {col('nmse_info')} | "
              f"{col('info_cost')} |")


if __name__ == "__main__":
    main()
