"""The experiment's sections check themselves when built in code, as the loader builds them:
each bad value names its field, and what a section derives (the objective, Ray's resource
request) follows its fields."""

from __future__ import annotations

import pytest
import yaml

from tuner.service import experiment
from tuner.service.experiment import Asha, FieldError, Finals, Resources, Search, Wandb


@pytest.mark.parametrize("build,field", [
    (lambda: Search(0.0, 1e-2, 8), "lr_low"),
    (lambda: Search(1e-2, 1e-3, 8), "lr_high"),
    (lambda: Search(1e-4, 1e-2, 0), "trials_per_cell"),
    (lambda: Search(1e-4, 1e-2, 8, max_concurrent=0), "max_concurrent"),
    (lambda: Search(1e-4, 1e-2, 8, population=9), "population"),
    (lambda: Search(1e-4, 1e-2, 8, share_program=True), "share_program"),
    (lambda: Asha("eval/nmse", "lowest", 10, 3, 100), "mode"),
    (lambda: Asha("eval/nmse", "min", 101, 3, 100), "grace_period"),
    (lambda: Asha("eval/nmse", "min", 10, 1.0, 100), "reduction_factor"),
    (lambda: Finals((0,)), "seeds"),
    (lambda: Finals((0, 0)), "seeds"),
    (lambda: Finals((0, experiment.SEARCH_SEED)), "seeds"),
    (lambda: Resources(cpus_per_trial=0), "cpus_per_trial"),
    (lambda: Resources(gpus_per_trial=1.5), "gpus_per_trial"),
    (lambda: Wandb("a/b"), "project"),
])
def test_a_bad_value_names_its_field(build, field):
    with pytest.raises(FieldError) as e:
        build()
    assert e.value.field == field and "allowed" in e.value.message


def test_good_sections_and_what_they_derive():
    search = Search(1e-4, 1e-2, 8, max_concurrent=None, population=4, share_program=True)
    assert search.auto_concurrency and not Search(1e-4, 1e-2, 8).auto_concurrency
    asha = Asha("eval/skill", "max", 10, 3, 100)
    assert asha.objective.better(0.9, 0.8) and not asha.objective.better(0.8, 0.9)
    assert Resources(0.5, 0.25).ray == {"cpu": 0.5, "gpu": 0.25}
    assert Resources(1, 2.0).gpus_per_trial == 2.0  # whole GPUs
    assert Finals((3, 1)).seeds == (3, 1)  # order kept: the report lists seeds as written


def test_the_loader_reads_sections_that_equal_built_ones():
    """exp4's file, loaded, holds the sections built by hand from its YAML text."""
    raw = yaml.safe_load((experiment.SEARCH_SPACES / "exp4.yaml").read_text())
    search = {k: None if v == "auto" else v for k, v in raw["search"].items()}
    exp = experiment.load("exp4")
    assert exp.search == Search(**search)
    assert exp.asha == Asha(**raw["asha"], max_t=raw["fixed"]["train.steps"])
    assert exp.finals == Finals(tuple(raw["finals"]["seeds"]))
    assert exp.objective == exp.asha.objective
