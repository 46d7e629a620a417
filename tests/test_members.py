"""A trial's members and each one's own rows and state (tuner.service.members), on results
written by hand as the trainables report them (tuner.service.trials): what W&B logs per member
and the viewer draws per member."""

from __future__ import annotations

from tuner.service.members import member_rows, member_state, members_of

POP = {"stage": "search", "wave": 1, "halving": {"max_t": 60},
       "cells": {"a=1": {"model.a": 1}, "a=2": {"model.a": 2}},
       "members": [{"cell": "a=1", "number": 5, "lr": 1e-3, "source": "tpe"},
                   {"cell": "a=1", "number": 6, "lr": 1e2, "source": "neighbour:a=2"},
                   {"cell": "a=2", "number": 5, "lr": 1e-2}]}  # a folder without sources


def pop_rows() -> list[dict]:
    """Member 1 diverges at step 20, member 2 is stopped at the rung (20), member 0 goes on."""
    nan = float("nan")
    return [{"training_iteration": 1, "step": 20, "timestamp": 100,
             "member_0/step": 20, "member_0/eval/nmse": 0.5, "member_0/stopped": False,
             "member_1/step": 20, "member_1/eval/nmse": nan, "member_1/diverged": True,
             "member_1/stopped": False,
             "member_2/step": 20, "member_2/eval/nmse": 0.9, "member_2/stopped": True},
            {"training_iteration": 2, "step": 40, "timestamp": 110, "member_0/step": 40,
             "member_0/eval/nmse": 0.4, "member_0/stopped": False},
            {"training_iteration": 3, "step": 60, "timestamp": 120, "member_0/step": 60,
             "member_0/eval/nmse": 0.3, "member_0/stopped": False}]


def test_population_members_end_where_they_stopped():
    members = members_of(POP)
    assert [(m.cell, m.number, m.lr, m.source, m.wave, m.coords) for m in members] == [
        ("a=1", 5, 1e-3, "tpe", 1, {"model.a": 1}), ("a=1", 6, 1e2, "neighbour:a=2", 1,
                                                      {"model.a": 1}),
        ("a=2", 5, 1e-2, "", 1, {"model.a": 2})]
    rows = pop_rows()
    own = [member_rows(m, rows) for m in members]
    assert [[r["training_iteration"] for r in o] for o in own] == [[1, 2, 3], [1], [1]]
    assert [r["eval/nmse"] for r in own[0]] == [0.5, 0.4, 0.3]
    assert own[2][0] == {"step": 20, "eval/nmse": 0.9, "stopped": True,
                         "training_iteration": 1, "timestamp": 100}
    states = [member_state(m, o[-1], 60) for m, o in zip(members, own, strict=True)]
    assert states == ["complete", "diverged", "pruned"]
    assert member_state(members[0], own[0][1], 60) is None  # at step 40: still training


def test_a_diverged_final_seed_stops_at_its_divergence():
    config = {"final": {"stage": "final", "cell": "a=1", "lr": 1e-3, "seeds": [0, 3],
                        "overrides": {"model.a": 1}}}
    rows = [{"training_iteration": i, "step": 20 * i, "seed_0/step": 20 * i,
             "seed_0/eval/nmse": 1.0 / i, "seed_3/step": 20 * min(i, 2),  # stuck at 40
             "seed_3/diverged": i >= 2, "seed_3/eval/nmse": 2.0} for i in (1, 2, 3)]
    seed0, seed3 = members_of(config)
    assert (seed0.seed, seed3.seed, seed3.label) == (0, 3, "a=1 seed 3")
    assert [r["step"] for r in member_rows(seed0, rows)] == [20, 40, 60]
    assert [r["step"] for r in member_rows(seed3, rows)] == [20, 40]
    assert member_state(seed3, member_rows(seed3, rows)[-1], None) == "diverged"
    assert member_state(seed0, member_rows(seed0, rows)[-1], None) is None
    assert member_state(seed0, member_rows(seed0, rows)[-1], None, ended=True) == "complete"
    assert member_state(seed0, member_rows(seed0, rows)[-1], None, ended=True,
                        failed=True) == "failed"


def test_a_one_rate_trial_is_its_own_member():
    config = {"cell": "a=1", "lr": 0.01, "stage": "search", "overrides": {"model.a": 1}}
    (m,) = members_of(config)
    rows = [{"training_iteration": 1, "step": 20, "eval/nmse": 0.5, "done": False}]
    assert member_rows(m, rows) == rows and m.prefix == ""
    assert member_state(m, rows[-1], 60) is None
    # stopped by ASHA at 20 (Tune marks its last result done as for a finished one)
    assert member_state(m, {**rows[-1], "done": True}, 60, ended=True) == "pruned"
    assert member_state(m, {**rows[-1], "step": 60}, 60) == "complete"
    assert members_of({"pilot": {"cell": "a=1", "lr": 0.01, "seeds": [0]}}) == []
