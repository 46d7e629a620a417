"""The fitted pick where the service uses it: pooled with grid neighbours (vertices known by
construction), read from the population searcher's journals (a fresh searcher on the same
journals picks the same), and chosen in the experiment file (``search.pick``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tuner.service import experiment
from tuner.service.experiment.load import SearchSpaceError
from tuner.service.search.pick import SHIFT, pick_rate
from tuner.service.search.population import PopulationSearcher
from tuner.service.trial_spec import Worker, member_key

LO, HI = 1e-4, 1e-1
X = np.log(np.geomspace(2e-4, 5e-2, 8))  # the members' log rates, shared by the cells below


def _cell(vertex: float, level: float, curvature: float = 0.05) -> tuple[list, list]:
    """A cell whose members' values are ``level * (1 + curvature (x - vertex)^2)``, with
    ``vertex`` on one of the rates: its best value is ``level`` exactly, so its values relative
    to the best are ``curvature (x - vertex)^2`` whatever the level."""
    return ([float(math.exp(x)) for x in X],
            [{20: level * (1 + curvature * (x - vertex) ** 2)} for x in X])


def test_pooled_vertex_is_the_weighted_mean_of_the_cells_vertices():
    """Cells with the same members and the same relative curvature: the residuals of a shared
    parabola cancel between them, so its vertex is the mean of theirs, the cell's own counted
    as much as all its neighbours together (levels 1, 7, 0.2: the scale does not matter)."""
    own, left, right = _cell(X[2], 1.0), _cell(X[5], 7.0), _cell(X[6], 0.2)
    p = pick_rate(*own, LO, HI, shift=0.0, neighbours=[left])
    assert p.cells == 2 and p.how == "fit"
    assert math.log(p.lr) == pytest.approx((X[2] + X[5]) / 2, abs=1e-9)
    p = pick_rate(*own, LO, HI, shift=0.0, neighbours=[left, right])
    assert math.log(p.lr) == pytest.approx((2 * X[2] + X[5] + X[6]) / 4, abs=1e-9)
    alone = pick_rate(*own, LO, HI, shift=0.0)
    assert alone.cells == 1 and math.log(alone.lr) == pytest.approx(X[2], abs=1e-9)


def test_a_neighbour_with_too_few_values_is_left_out_and_the_clip_is_the_cells_own():
    own = _cell(X[0], 1.0)  # the cell's optimum at its lowest rate
    bare = ([1e-3, 2e-3], [{20: 1.0}, {20: 1.1}])  # two values: no parabola
    assert pick_rate(*own, LO, HI, shift=0.0, neighbours=[bare]).cells == 1
    # a neighbour whose valley lies far below (its values relative to its parabola's bottom,
    # not to its best tried value) pulls the vertex to X[0] - 1.5, under the cell's own
    # rates: clipped to the lowest of them
    far = _cell(X[0] - 3, 1.0)
    p = pick_rate(*own, LO, HI, shift=0.0, neighbours=[far])
    assert p.how == "clipped fit" and p.lr == pytest.approx(math.exp(X[0]))


# ---------------------------------------------------------------------- the searcher
LINE = {"x=0": (0,), "x=1": (1,)}
VERTEX = 3e-3  # both cells' optimum at the rung (levels differ)


def _searcher(tmp_path, **kw):
    return PopulationSearcher({c: {"x": x[0]} for c, x in LINE.items()}, coords=LINE,
                              groups=[["x=0"], ["x=1"]], trials_per_cell=8, population=8,
                              lr_low=LO, lr_high=HI, metric="eval/nmse", mode="min", max_t=60,
                              grace_period=20, reduction_factor=3, study_dir=tmp_path,
                              worker=Worker(), **kw)


def _value(cell: str, lr: float) -> float:
    return (1 + LINE[cell][0]) * (1 + 0.05 * math.log(lr / VERTEX) ** 2)


def _search(s: PopulationSearcher) -> None:
    """Every population: all members at the rung (step 20), each cell's best on to 60."""
    for tid in (f"t{i}" for i in itertools.count()):
        config = s.suggest(tid)
        if config is None or config == PopulationSearcher.FINISHED:
            return
        members = config["members"]
        values = [_value(m["cell"], m["lr"]) for m in members]
        best = min(range(len(members)), key=values.__getitem__)
        s.on_trial_result(tid, {"step": 20, **{member_key(j, "step"): 20 for j in range(8)},
                                **{member_key(j, "eval/nmse"): v for j, v in enumerate(values)},
                                **{member_key(j, "stopped"): j != best for j in range(8)}})
        s.on_trial_complete(tid, {"step": 60, member_key(best, "step"): 60,
                                  member_key(best, "eval/nmse"): values[best] * 0.9})


def test_the_searcher_picks_the_fitted_rate_from_its_journals(tmp_path):
    s = _searcher(tmp_path)
    _search(s)
    best = s.best_per_cell()
    for cell in LINE:
        b = best[cell]
        # the values are an exact parabola with its vertex at VERTEX in both cells: the pick
        # is VERTEX moved by the shift, not the survivor (a tried rate, not VERTEX)
        assert b["pick"] == "fit" and b["lr"] == pytest.approx(VERTEX * math.exp(SHIFT),
                                                                rel=1e-6)
        tried = [t for t in s._studies[cell].trials() if t.number == b["trial_number"]][0]
        assert b["survivor_lr"] == tried.params["lr"] and b["value"] == tried.value
        assert abs(math.log(b["survivor_lr"] / b["lr"])) > 1e-3
    # a pure function of the journals: a fresh searcher on them (a resumed driver) agrees
    assert _searcher(tmp_path).best_per_cell() == best
    # the old rule on request: the best full-budget member
    old = _searcher(tmp_path, pick="survivor").best_per_cell()
    assert {c: b["lr"] for c, b in old.items()} == {c: b["survivor_lr"] for c, b in best.items()}
    assert "pick" not in old["x=0"]
    with pytest.raises(ValueError, match="allowed: \\['fit', 'survivor'\\]"):
        _searcher(tmp_path, pick="best")


def test_the_experiment_file_names_a_bad_pick(tmp_path):
    text = (experiment.SEARCH_SPACES / "bigram.yaml").read_text()
    assert "\n  trials_per_cell: 8\n" in text
    good = tmp_path / "good.yaml"
    good.write_text(text.replace("\n  trials_per_cell: 8\n",
                                 "\n  trials_per_cell: 8\n  pick: survivor\n", 1))
    assert experiment.load(str(good)).search.pick == "survivor"
    assert experiment.load("exp3").search.pick == "fit"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("\n  trials_per_cell: 8\n",
                                "\n  trials_per_cell: 8\n  pick: best\n", 1))
    with pytest.raises(SearchSpaceError) as e:
        experiment.load(str(bad))
    line = text.split("\n").index("  trials_per_cell: 8") + 2
    assert f"bad.yaml:{line}" in str(e.value) and "search.pick" in str(e.value)
    assert "fit or survivor" in str(e.value)
