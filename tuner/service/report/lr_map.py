"""The rate map: the chosen learning rate of every cell over the grid's axes, as one figure.

How the best rate moves with the grid (lambda, structure, patch, dim_y) is otherwise only
readable from the report's table. Two axes give a heatmap (log colour, each cell's rate written
in it), one axis a line (log y), more axes one heatmap of the first two per value of the
others (facets). A rate chosen at an edge of its searched range is marked (the true optimum may
lie beyond it). Matplotlib only: the report writes it as ``report/lr_map.png`` and the viewer
shows the same figure for a running search (best rates so far).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

EDGE_MARK = {"low": "▼ low edge", "high": "▲ high edge"}


def table(grid: dict[str, list], cells: dict[str, dict[str, Any]],
          best: dict[str, dict[str, Any] | None]) -> pd.DataFrame:
    """One row per cell: its axis values, ``lr`` (NaN where none was chosen yet) and ``edge``
    (``low``/``high``/empty).

    Args:
        grid: The experiment's axes and their values (``Experiment.grid``).
        cells: Cell id -> its axis values (``Experiment.cells()``).
        best: Cell id -> ``{lr, at_edge, ...}`` as ``search_best.json`` holds it (or None).
    """
    rows = []
    for cell, over in cells.items():
        b = best.get(cell) or {}
        rows.append({"cell": cell, **{a: over.get(a) for a in grid},
                     "lr": float(b["lr"]) if b.get("lr") is not None else math.nan,
                     "edge": b.get("at_edge") or ""})
    return pd.DataFrame(rows, columns=["cell", *grid, "lr", "edge"])


def _short(axis: str) -> str:
    return axis.split(".")[-1]


def figure(grid: dict[str, list], rows: pd.DataFrame, title: str) -> plt.Figure:
    """The map of :func:`table`'s ``rows``: heatmap (2 axes), line (1 axis), facets (more)."""
    axes = list(grid)
    finite = rows.lr[rows.lr.map(lambda v: math.isfinite(v) and v > 0)]
    norm = LogNorm(finite.min(), finite.max()) if len(finite) and finite.min() < finite.max() \
        else None
    if len(axes) <= 1:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        _line(ax, axes[0] if axes else None, grid, rows)
    else:
        facet_axes = axes[2:]
        facets = list(itertools.product(*(grid[a] for a in facet_axes))) or [()]
        ncol = min(3, len(facets))
        nrow = math.ceil(len(facets) / ncol)
        fig, subs = plt.subplots(nrow, ncol, figsize=(5.2 * ncol + 1, 4.2 * nrow), squeeze=False)
        image = None
        for ax, key in zip(subs.flat, facets, strict=False):
            part = rows
            for a, v in zip(facet_axes, key, strict=True):
                part = part[part[a] == v]
            image = _heatmap(ax, axes[0], axes[1], grid, part, norm)
            if key:
                ax.set_title(", ".join(f"{_short(a)}={v}" for a, v in zip(facet_axes, key,
                                                                          strict=True)),
                             fontsize=9)
        for ax in list(subs.flat)[len(facets):]:
            ax.set_visible(False)
        if image is not None:
            fig.colorbar(image, ax=subs.ravel().tolist(), label="chosen lr")
    fig.suptitle(title, fontsize=10)
    return fig


def _line(ax, axis: str | None, grid: dict[str, list], rows: pd.DataFrame) -> None:
    values = grid[axis] if axis else [""]
    xs = [str(v) for v in values]
    lr = [rows.lr[rows[axis] == v].iloc[0] if axis else rows.lr.iloc[0] for v in values]
    ax.plot(xs, lr, marker="o", color="#1f77b4")
    for x, v in zip(xs, values, strict=True):
        edge = rows.edge[rows[axis] == v].iloc[0] if axis else rows.edge.iloc[0]
        y = lr[xs.index(x)]
        if edge and math.isfinite(y):
            ax.annotate(EDGE_MARK[edge], (x, y), textcoords="offset points", xytext=(4, 6),
                        color="#d62728", fontsize=8)
            ax.plot([x], [y], marker="o", color="#d62728", markersize=9, fillstyle="none")
    ax.set_yscale("log")
    ax.set_xlabel(_short(axis) if axis else "the one cell")
    ax.set_ylabel("chosen lr")
    ax.grid(alpha=0.3)


def _heatmap(ax, x_axis: str, y_axis: str, grid: dict[str, list], rows: pd.DataFrame, norm):
    xs, ys = grid[x_axis], grid[y_axis]
    values = [[math.nan] * len(xs) for _ in ys]
    for _, r in rows.iterrows():
        i, j = ys.index(r[y_axis]), xs.index(r[x_axis])
        values[i][j] = r.lr
        text = "—" if not math.isfinite(r.lr) else f"{r.lr:.2g}"
        if r.edge:
            text += "\n" + EDGE_MARK[r.edge]
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="#d62728" if r.edge else "black")
    image = ax.imshow(values, cmap="viridis", norm=norm, aspect="auto", origin="lower",
                      alpha=0.85)
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(_short(x_axis))
    ax.set_ylabel(_short(y_axis))
    return image


def write(grid: dict[str, list], cells: dict[str, dict[str, Any]],
          best: dict[str, dict[str, Any] | None], path: Path, title: str) -> Path:
    """Saves the rate map of ``best`` as a PNG at ``path`` (the report's ``lr_map.png``)."""
    fig = figure(grid, table(grid, cells, best), title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
