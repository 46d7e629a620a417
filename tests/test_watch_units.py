"""Fast checks (no Ray cluster) of what the watching views are built from: the trial label the
Ray dashboard shows, and the rate map's table and figure against hand-built grids."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tuner.service import trial_names
from tuner.service.report import lr_map


def test_label_names_experiment_stage_cell_and_rate():
    search = {"stage": "search", "cell": "lambda=0.9,patch=4", "lr": 0.0031622776,
              "overrides": {"model.patch_size": 4}, "jax_cache_dir": "/x"}
    assert trial_names.label(search, "exp4") == "exp4 search lambda=0.9,patch=4 lr=0.00316"
    final = {"final": {"stage": "final", "cell": "patch=1", "lr": 2.5e-4, "seeds": [0, 1, 2]}}
    assert trial_names.label(final, "exp4") == "exp4 final patch=1 lr=0.00025 seeds=0,1,2"
    population = {"stage": "search", "wave": 2,
                  "members": [{"cell": "a", "number": 0, "lr": 1e-4},
                              {"cell": "a", "number": 1, "lr": 1e-1},
                              {"cell": "b", "number": 0, "lr": 3e-3}]}
    assert trial_names.label(population, "exp4") == \
        "exp4 search wave 2 K=3 a:lr=0.0001..0.1 b:lr=0.003"
    assert trial_names.reused_label(search, "exp4") == \
        "exp4 search (reused worker: trials of any cell)"


def test_named_trainable_reprs_its_trial():
    """The class Tune instantiates per trial: its repr is taken from the config it was built
    with (Tune passes it to ``__init__``); Tune's registry name stays the function's."""
    from ray import tune

    def train_fn(config, base):
        return None

    cls = trial_names.named(tune.with_parameters(train_fn, base=1), "exp4")
    assert cls._name == "train_fn" and cls.__name__ == "train_fn"
    trial = cls.__new__(cls)  # no __init__: that starts Tune's training thread
    trial.config = {"stage": "search", "cell": "patch=1", "lr": 0.01}
    assert repr(trial) == "exp4 search patch=1 lr=0.01"


def _grid3():
    grid = {"data.lambda_val": [0.9, 0.99], "model.patch_size": [1, 4, 8], "data.dim_y": [2, 4]}
    cells = {f"c{i}": dict(zip(grid, values, strict=True))
             for i, values in enumerate(itertools.product(*grid.values()))}
    return grid, cells


def test_rate_map_table_and_heatmap_place_every_cell():
    grid, cells = _grid3()
    best = {c: {"lr": 10.0 ** (-4 + 0.25 * i), "at_edge": "high" if i == 3 else None}
            for i, c in enumerate(cells)}
    best["c5"] = None  # no rate yet (a running search)
    rows = lr_map.table(grid, cells, best)
    assert list(rows.columns) == ["cell", *grid, "lr", "edge"]
    assert math.isnan(rows.set_index("cell").loc["c5", "lr"])
    assert rows.set_index("cell").loc["c3", "edge"] == "high"

    fig = lr_map.figure(grid, rows, "three axes")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["dim_y=2", "dim_y=4"]  # facets: third axis
    for ax, dim_y in zip(panels, grid["data.dim_y"], strict=True):
        drawn = np.asarray(ax.images[0].get_array().filled(np.nan))
        for cell, over in cells.items():
            if over["data.dim_y"] != dim_y:
                continue
            i = grid["model.patch_size"].index(over["model.patch_size"])  # rows: second axis
            j = grid["data.lambda_val"].index(over["data.lambda_val"])  # columns: first axis
            want = best[cell]["lr"] if best[cell] else math.nan
            # the image holds the float64 rates themselves: equal up to float rounding
            assert drawn[i, j] == pytest.approx(want, rel=1e-12, nan_ok=True)
        texts = [t.get_text() for t in ax.texts]
        assert any(lr_map.EDGE_MARK["high"] in t for t in texts) == (
            cells["c3"]["data.dim_y"] == dim_y)


def test_rate_map_line_for_one_axis():
    grid = {"model.patch_size": [1, 4, 16]}
    cells = {f"patch={p}": {"model.patch_size": p} for p in grid["model.patch_size"]}
    best = {"patch=1": {"lr": 1e-3}, "patch=4": {"lr": 3e-4, "at_edge": "low"},
            "patch=16": {"lr": 1e-4}}
    fig = lr_map.figure(grid, lr_map.table(grid, cells, best), "one axis")
    (ax,) = fig.axes
    (line, *_) = ax.lines
    assert list(line.get_ydata()) == pytest.approx([1e-3, 3e-4, 1e-4], rel=1e-12)
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.texts] == [lr_map.EDGE_MARK["low"]]
