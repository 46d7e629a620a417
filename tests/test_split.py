"""A program that runs out of device memory is split and its members carry on
(tuner/core/split.py): the same trajectories as the whole program, and a clear error when one
member alone does not fit. The out-of-memory error is the test hook's (TUNER_TEST_OOM_ABOVE),
raised where XLA's would be."""

from __future__ import annotations

import numpy as np
import pytest
from test_population import RTOL, _configs

from tuner.core.population import Population, train_population
from tuner.core.split import TEST_OOM_ENV, MemberTooLarge


def _run(monkeypatch, limit: int | None):
    if limit is None:
        monkeypatch.delenv(TEST_OOM_ENV, raising=False)
    else:
        monkeypatch.setenv(TEST_OOM_ENV, str(limit))
    pop = Population(_configs())
    halve = lambda step, previous, progress: set()  # noqa: E731
    # masked (compact=False): every chunk holds all four members, so each one is split
    return train_population(pop, lambda *_: None, halve, compact=False)


def test_a_split_program_trains_every_member_as_the_whole_one(monkeypatch, capsys):
    whole = _run(monkeypatch, None)
    split = _run(monkeypatch, 1)  # four members, one a program
    assert "splitting it into 2 pieces" in capsys.readouterr().out
    for a, b in zip(whole.last, split.last, strict=True):
        assert a["step"] == b["step"] and a.get("diverged") == b.get("diverged")
        if not a.get("diverged"):
            np.testing.assert_allclose(b["eval/nmse"], a["eval/nmse"], rtol=RTOL)
            np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=RTOL)


def test_a_member_that_does_not_fit_alone_stops_with_what_to_change(monkeypatch):
    with pytest.raises(MemberTooLarge, match="does not fit the device even alone.*batch_size"):
        _run(monkeypatch, 0)
