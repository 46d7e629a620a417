"""Bad experiment input fails early with file, line, field and the allowed values, and the CLI
starts nothing (no Ray, no experiment folder) when it does."""

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuner.service import experiment

SHIPPED = (experiment.SEARCH_SPACES / "exp4.yaml").read_text()
# the cases below add claim metrics of their own: start from claims without them
GOOD = SHIPPED.replace("    metrics: [eval/nmse_info, eval/skill_info]\n", "")
FIXTURES = Path(__file__).parent / "fixtures"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def line_of(text: str, line_text: str) -> int:
    """1-based number of the first line that starts with ``line_text`` (blanks ignored)."""
    return next(i for i, line in enumerate(text.splitlines(), 1)
                if line.strip().startswith(line_text.strip()))


@pytest.mark.parametrize("old,new,field,allowed", [
    ("  data.lambda_val: 0.96", "  data.lambda_val: 1.5", "fixed.data.lambda_val", "(0, 1)"),
    ("  data.structure: dense", "  data.structure: banded", "fixed.data.structure", "diagonal"),
    ("  model.patch_size: [1, 4, 16]", "  model.patch_size: [1, 3]", "grid.model.patch_size",
     "allowed: 1, 2, 4, 8, 16, 32"),
    ("  data.dim_y: [1, 2, 4, 8]", "  data.dim_y: [1, 128]", "grid.data.dim_y", "dim_x=64"),
    ("  metric: eval/nmse", "  metric: accuracy", "asha.metric", "eval/skill"),
    ("  seeds: [0, 1, 2]", "  seeds: [0]", "finals.seeds", "at least 2"),
    ("  lr_high: 3.0e-3", "  lr_high: 1.0e-6", "search.lr_high", "> lr_low"),
    ("  train.batch_size: 64", "  train.batch_sise: 64", "fixed.train.batch_sise",
     "batch_size"),
    ("  reduction_factor: 3", "  reduction_factor: 3\n  brackets: 2", "asha.brackets",
     "grace_period"),
])
def test_bad_field_names_file_line_field_and_allowed(tmp_path, old, new, field, allowed):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(experiment.SearchSpaceError) as err:
        experiment.load(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line_of(text, new.splitlines()[-1])}: {field}:"), msg
    assert allowed in msg


def test_smoke_override_errors_point_into_the_smoke_section(tmp_path):
    text = GOOD.replace("    train.steps: 60", "    train.steps: 50")  # not a multiple of 20
    path = write(tmp_path, text)
    experiment.load(str(path))  # the full profile is fine
    with pytest.raises(experiment.SearchSpaceError, match=rf"bad.yaml:"
                       rf"{line_of(text, 'train.steps: 50')}: smoke.fixed.train.steps"):
        experiment.load(str(path), smoke=True)


def test_rungs_between_evaluations_are_refused_with_the_nearest_settings(tmp_path):
    """A population halves once per evaluation: a rung between two evaluations would collapse
    into the next one (issue 31: the smoke's grace 30 with evaluations every 20 ran silently)."""
    text = GOOD.replace("  grace_period: 2000", "  grace_period: 2500")
    path = write(tmp_path, text)
    with pytest.raises(experiment.SearchSpaceError) as err:
        experiment.load(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line_of(text, '  grace_period: 2500')}: asha.grace_period: "
                          "2500 with reduction_factor=3 puts rungs at steps [2500, 7500, "
                          "22500], but train.eval_every=1000"), msg
    assert "allowed: asha.grace_period 2000 or 3000" in msg
    assert "or train.eval_every 625 or 1250" in msg  # the nearest dividing 2500 and 30000
    text = GOOD.replace("    grace_period: 20", "    grace_period: 30")
    path = write(tmp_path, text)
    experiment.load(str(path))  # the full profile's rungs are evaluations
    with pytest.raises(experiment.SearchSpaceError, match=rf"bad.yaml:"
                       rf"{line_of(text, 'grace_period: 30')}: smoke.asha.grace_period: 30 .*"
                       r"allowed: asha.grace_period 20 or 40 .* train.eval_every 15 or 30"):
        experiment.load(str(path), smoke=True)
    # a grid over the evaluation interval: every cell's evaluations must hold the rungs
    text = GOOD.replace("  train.eval_every: 1000 ", "  # ").replace(
        DIM_Y, DIM_Y + "\n  train.eval_every: [1000, 3000]")
    path = write(tmp_path, text)
    with pytest.raises(experiment.SearchSpaceError, match=r"asha.grace_period: 2000 .*"
                       r"train.eval_every=3000 \(cell .*allowed: asha.grace_period 3000"):
        experiment.load(str(path))


def test_malformed_yaml_and_unknown_experiment(tmp_path):
    path = write(tmp_path, "name: x\ngrid: [unclosed\n")
    with pytest.raises(experiment.SearchSpaceError, match=r"bad.yaml:\d+: not valid YAML"):
        experiment.load(str(path))
    with pytest.raises(experiment.SearchSpaceError, match=r"unknown experiment 'exp9'.*exp1, "
                       r"exp2, exp3, exp4"):
        experiment.load("exp9")


def test_every_shipped_experiment_loads_and_smoke_is_small():
    for name in experiment.known():
        full, smoke = experiment.load(name), experiment.load(name, smoke=True)
        assert full.cells().keys() == smoke.cells().keys()  # smoke searches every cell
        assert smoke.base.train.steps <= 100 and len(smoke.finals.seeds) >= 2
        assert smoke.resources.gpus_per_trial == 0


def swap_section(text: str, key: str, new: str, indent: int = 0) -> str:
    """``text`` with the first ``key:`` section at ``indent`` (its line and the more indented
    lines after it) replaced by ``new`` (lines without the indent; "" removes it)."""
    lines = text.splitlines()
    pad = " " * indent
    start = next(i for i, line in enumerate(lines) if re.match(rf"{pad}{re.escape(key)}:", line))
    end = start + 1
    while end < len(lines) and (lines[end].startswith(pad + " ") or not lines[end].strip()):
        end += 1
    body = [pad + line for line in new.splitlines()]
    return "\n".join(lines[:start] + body + lines[end:]) + "\n"


def expect_error(path: Path, line: int, field: str, allowed: str, smoke: bool = False) -> str:
    with pytest.raises(experiment.SearchSpaceError) as err:
        experiment.load(str(path), smoke=smoke)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: {field}:"), msg
    assert allowed in msg, msg
    assert "allowed:" in msg, msg
    return msg


SEEDS = "integers in [0, 999999]"
DIM_Y = "  data.dim_y: [1, 2, 4, 8]"
PATCH = "  model.patch_size: [1, 4, 16]"
BATCH = "  train.batch_size: 64"
CLAIM0 = "  - kind: trend\n    axis: data.dim_y\n    direction: decreasing"
CLAIM_DIR = "    direction: decreasing"
SECTION_TEXT = "a mapping"
NON_EMPTY = "a non-empty list of distinct values, each an integer"

# (old, new, field, text the message must contain, line the error must name (default: the
# last line of new)); every case is one careless mistake in an otherwise good file (exp4)
BAD = [
    # finals.seeds: distinct integers in [0, SEARCH_SEED)
    ("  seeds: [0, 1, 2]", "  seeds: [1.2, 1.7]", "finals.seeds", SEEDS, None),
    ("  seeds: [0, 1, 2]", "  seeds: [0, 1, 3.0]", "finals.seeds", SEEDS, None),
    ("  seeds: [0, 1, 2]", "  seeds: [true, false]", "finals.seeds", "is a boolean", None),
    ("  seeds: [0, 1, 2]", "  seeds: [0, 1000000]", "finals.seeds",
     "reserved for the learning-rate search", None),
    ("  seeds: [0, 1, 2]", "  seeds: [-1, 0]", "finals.seeds", SEEDS, None),
    ("  seeds: [0, 1, 2]", "  seeds: [0, 1, 1]", "finals.seeds", "1 is given twice", None),
    ("  seeds: [0, 1, 2]", "  seeds: 3", "finals.seeds", "at least 2", None),
    ("  seeds: [0, 1, 2]", "  seeds: ['0', '1']", "finals.seeds", SEEDS, None),
    ("  seeds: [0, 1, 2]", "  seeds:\n    - 0\n    - 0.5", "finals.seeds", SEEDS, None),
    # search: integer counts >= 1, finite positive lr bounds (lr_high > lr_low)
    ("  trials_per_cell: 8 ", "  trials_per_cell: 3.5", "search.trials_per_cell",
     "an integer >= 1", None),
    ("  trials_per_cell: 8 ", "  trials_per_cell: 3.0", "search.trials_per_cell",
     "an integer >= 1", None),
    ("  trials_per_cell: 8 ", "  trials_per_cell: true", "search.trials_per_cell",
     "an integer >= 1", None),
    ("  trials_per_cell: 8 ", "  trials_per_cell: 0", "search.trials_per_cell",
     "an integer >= 1", None),
    ("  trials_per_cell: 8 ", "  trials_per_cell: 1e2", "search.trials_per_cell",
     "without a dot or exponent", None),
    ("  trials_per_cell: 8 ", "  trials_per_cell:", "search.trials_per_cell",
     "an integer >= 1", None),
    ("  max_concurrent: auto", "  max_concurrent: 0", "search.max_concurrent",
     "an integer >= 1", None),
    ("  max_concurrent: auto", "  max_concurrent: 2.0", "search.max_concurrent",
     "an integer >= 1", None),
    ("  population: 8", "  population: 0", "search.population", "an integer >= 1", None),
    ("  population: 8", "  population: 2.0", "search.population", "an integer >= 1", None),
    ("  population: 8", "  population: 9", "search.population",
     "an integer in 1..trials_per_cell=8", None),
    ("  share_program: true", "  share_program: 1", "search.share_program", "true or false",
     None),
    ("  population: 8", "  population: 1", "search.share_program",
     "true needs a population", "  share_program: true"),
    ("  lr_high: 3.0e-3", "  lr_high: .inf", "search.lr_high", "a finite number > lr_low",
     None),
    ("  lr_low: 3.0e-5", "  lr_low: -1.0e-5", "search.lr_low", "a finite number > 0", None),
    ("  lr_low: 3.0e-5", "  lr_low: 0", "search.lr_low", "a finite number > 0", None),
    ("  lr_low: 3.0e-5", "  lr_low: .nan", "search.lr_low", "a finite number > 0", None),
    ("  lr_low: 3.0e-5", "  lr_low: 1e-3 to 1e-2", "search.lr_low", "a finite number > 0",
     None),
    ("  lr_low: 3.0e-5", "  lr_low: true", "search.lr_low", "a finite number > 0", None),
    ("  lr_low: 3.0e-5", "  lr_low: [1.0e-5]", "search.lr_low", "a finite number > 0", None),
    ("  lr_low: 3.0e-5", "  lr_low: 1e-2", "search.lr_high", "> lr_low=0.01",
     "lr_high: 3.0e-3"),  # the string 1e-2 is read as 0.01
    # asha
    ("  grace_period: 2000", "  grace_period: 2000.0", "asha.grace_period",
     "1..train.steps=30000", None),
    ("  grace_period: 2000", "  grace_period: 0", "asha.grace_period", "1..train.steps=30000",
     None),
    ("  grace_period: 2000", "  grace_period: 40000", "asha.grace_period",
     "1..train.steps=30000", None),
    ("  reduction_factor: 3", "  reduction_factor: 1", "asha.reduction_factor",
     "a finite number > 1", None),
    ("  reduction_factor: 3", "  reduction_factor: .inf", "asha.reduction_factor",
     "a finite number > 1", None),
    ("  reduction_factor: 3", "  reduction_factor: true", "asha.reduction_factor",
     "a finite number > 1", None),
    ("  mode: min", "  mode: minimize", "asha.mode", "['min', 'max']", None),
    ("  mode: min", "  mode: max", "asha.mode", "allowed: 'min'", None),  # nmse: lower is better
    ("  metric: eval/nmse", "  metric: [eval/nmse]", "asha.metric", "eval/skill", None),
    # resources: cpus finite > 0; gpus >= 0, a fraction <= 1 or whole
    ("  cpus_per_trial: 1", "  cpus_per_trial: -1", "resources.cpus_per_trial",
     "a finite number > 0", None),
    ("  cpus_per_trial: 1", "  cpus_per_trial: one", "resources.cpus_per_trial",
     "a finite number > 0", None),
    ("  cpus_per_trial: 1", "  cpus_per_trial: 0", "resources.cpus_per_trial",
     "a finite number > 0", None),
    ("  cpus_per_trial: 1", "  cpus_per_trial: .inf", "resources.cpus_per_trial",
     "a finite number > 0", None),
    ("  cpus_per_trial: 1", "  cpus_per_trial: true", "resources.cpus_per_trial",
     "a finite number > 0", None),
    ("  gpus_per_trial: auto", "  gpus_per_trial: 1.5", "resources.gpus_per_trial",
     "a fraction <= 1", None),
    ("  gpus_per_trial: auto", "  gpus_per_trial: -0.25", "resources.gpus_per_trial",
     "a fraction <= 1", None),
    ("  gpus_per_trial: auto", "  gpus_per_trial: true", "resources.gpus_per_trial",
     "auto (the service sizes", None),
    ("  gpus_per_trial: auto", "  gpus_per_trial: half", "resources.gpus_per_trial",
     "a fraction <= 1", None),
    ("  gpus_per_trial: auto", "  gpus_per_trial: auto\n  gpu_memory_gib: 0",
     "resources.gpu_memory_gib", "one card's memory in GiB", None),
    # grid: non-empty lists of distinct, typed values; not also fixed; every cell buildable
    (DIM_Y, "  data.dim_y: [1, 2, 2, 8]", "grid.data.dim_y", "item 2: 2 is given twice", None),
    (DIM_Y, "  data.dim_y: [1, 2, 2.0]", "grid.data.dim_y", "an integer", None),
    (DIM_Y, "  data.dim_y: [1, true]", "grid.data.dim_y", "an integer", None),
    (DIM_Y, "  data.dim_y: []", "grid.data.dim_y", NON_EMPTY, None),
    (DIM_Y, "  data.dim_y: 4", "grid.data.dim_y", NON_EMPTY, None),
    (DIM_Y, "  data.dim_y: [1, {a: 2}]", "grid.data.dim_y", "an integer", None),
    (DIM_Y, "  data.dim_y: [[1, 2]]", "grid.data.dim_y", "an integer", None),
    (DIM_Y, "  data.dim_y:\n    - 1\n    - 2.5", "grid.data.dim_y", "an integer", None),
    (DIM_Y, "  data.dim_z: [1, 2]", "grid.data.dim_z", "field in ['dim_x', 'dim_y'",
     None),
    ("  data.lambda_val: 0.96", "  data.lambda_val: 0.96\n  data.dim_y: 2", "grid.data.dim_y",
     "in fixed or in grid, not both", DIM_Y),
    (PATCH, PATCH + "\n  data.seq_len: [256, 24]", "grid",
     "model.patch_size=16, data.seq_len=24 is impossible", "grid:"),
    (PATCH, PATCH + "\n  data.seq_len: [256, 24]", "grid", "allowed: [1, 2, 4, 8]", "grid:"),
    (PATCH, PATCH + "\n  train.lr: [1.0e-3, 1.0e-2]", "grid.train.lr", "search.lr_low", None),
    (PATCH, PATCH + "\n  train.seed: [0, 1]", "grid.train.seed", "finals.seeds", None),
    (PATCH, PATCH + "\n  train.steps: [100, 200]", "grid.train.steps", "set it in fixed", None),
    (PATCH, PATCH + "\n  task: [lds, bigram]", "grid.task", "set it in fixed", None),
    (PATCH, PATCH + f"\n  data.system_seed: {list(range(1000))}", "grid", "at most 10000 cells",
     "grid:"),
    ("  train.eval_every: 1000", "  train.eval_every: 1000\n  train.eval_batch: 512",
     "fixed.train.eval_batch",
     f"first at line {line_of(GOOD, '  train.eval_every: 1000') + 1}",
     "train.eval_batch: 1024"),  # the 2nd: below
    # fixed: values typed as the RunConfig field; fields the service sets are rejected
    (BATCH, "  train.batch_size: 64.0", "fixed.train.batch_size", "an integer", None),
    (BATCH, "  train.batch_size: true", "fixed.train.batch_size", "an integer", None),
    (BATCH, "  train.batch_size:", "fixed.train.batch_size", "an integer", None),
    ("  data.structure: dense", "  data.structure: no", "fixed.data.structure", "quote it",
     None),
    ("  data.structure: dense", "  data.structure: no", "fixed.data.structure", "'diagonal'",
     None),
    ("  data.lambda_val: 0.96", "  data.lambda_val: .nan", "fixed.data.lambda_val",
     "a finite number", None),
    ("  data.lambda_val: 0.96", "  data.lambda_val: [0.96]", "fixed.data.lambda_val",
     "a finite number", None),
    (BATCH, BATCH + '\n  model.revin: "yes"', "fixed.model.revin", "true or false", None),
    (BATCH, BATCH + "\n  rollout.horizons: 16", "fixed.rollout.horizons", "a list of integers",
     None),
    (BATCH, BATCH + "\n  train.lr: 1.0e-3", "fixed.train.lr", "search.lr_low", None),
    (BATCH, BATCH + "\n  train.seed: 3", "fixed.train.seed", "finals.seeds", None),
    (BATCH, BATCH + "\n  out_dir: /tmp/x", "fixed.out_dir", "with group in", None),
    (BATCH, BATCH + "\n  model.d_model: 72\n  model.n_heads: 8", "fixed",
     "together are impossible: ModelConfig.d_model=72 is not allowed; allowed: n_heads=8",
     "fixed:"),
    # claims
    ("    effect_axis: model.patch_size", "    effect_axis: data.dim_y",
     "claims[1].effect_axis", "another grid axis: ['model.patch_size']", None),
    ("    axis: data.dim_y", "    axis: data.lambda_val", "claims[0].axis",
     "is in fixed, not grid", None),
    ("    axis: data.dim_y", "    axis: data.dim_x", "claims[0].axis",
     "grid axes with >= 2 values: ['data.dim_y', 'model.patch_size']", None),
    ("    axis: data.dim_y\n", "", "claims[0].axis", "is missing", "- kind: trend"),
    (DIM_Y, "  data.dim_y: [1]", "claims[0].axis", "a single value", "axis: data.dim_y"),
    (CLAIM_DIR, CLAIM_DIR + "\n    metirc: eval/skill", "claims[0].metirc",
     "'effect_axis', 'metric', 'metrics', 'min_effect']", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metric: eval/nmse\n    metrics: [eval/skill]",
     "claims[0].metrics", "not both", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metrics: [eval/nmse, accuracy]", "claims[0].metrics",
     "eval/skill", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metrics: []", "claims[0].metrics", "a non-empty list", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metrics: eval/nmse", "claims[0].metrics", "a non-empty list",
     None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metrics: [eval/nmse, eval/nmse]", "claims[0].metrics",
     "distinct", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metric: accuracy", "claims[0].metric", "eval/skill", None),
    # min_effect: the smallest effect worth finding (report: seeds needed), in metric units
    (CLAIM_DIR, CLAIM_DIR + "\n    min_effect: 0", "claims[0].min_effect",
     "a finite number > 0", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    min_effect: .inf", "claims[0].min_effect",
     "a finite number > 0", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    min_effect: big", "claims[0].min_effect",
     "a finite number > 0", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metrics: [eval/nmse, eval/skill]\n    min_effect: 0.01",
     "claims[0].min_effect", "a mapping of the claim's metrics ['eval/nmse', 'eval/skill']",
     None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metrics: [eval/nmse, eval/skill]\n    min_effect:\n"
     "      eval/nmse: 0.01\n      eval/skil: 0.02", "claims[0].min_effect.eval/skil",
     "['eval/nmse', 'eval/skill']", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    metrics: [eval/nmse, eval/skill]\n    min_effect:\n"
     "      eval/nmse: -0.01", "claims[0].min_effect.eval/nmse", "a finite number > 0", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    min_effect: {eval/nmse: 0.01}", "claims[0].min_effect.eval/nmse",
     "a plain number: the claim is judged on asha.metric", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    better: 1", "claims[0].better",
     "allowed: for trend, ['kind', 'text', 'axis', 'direction', 'metric', 'metrics', "
     "'min_effect']", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    effect_axis: model.patch_size", "claims[0].effect_axis",
     "allowed: for trend", None),
    (CLAIM_DIR, "    direction: down", "claims[0].direction", "'increasing', 'decreasing'",
     None),
    ("  - kind: trend", "  - kind: trends", "claims[0].kind", "'effect_compare'", None),
    (CLAIM0, "  - kind: compare\n    axis: data.dim_y\n    better: 3", "claims[0].better",
     "[1, 2, 4, 8]", None),
    (CLAIM0, "  - kind: compare\n    axis: data.dim_y\n    better: true", "claims[0].better",
     "[1, 2, 4, 8]", None),
    (CLAIM0, "  - kind: compare\n    axis: data.dim_y\n    better: [1]", "claims[0].better",
     "[1, 2, 4, 8]", None),
    ("    text: smaller dim_y is harder\n", "    text: [a, b]\n",
     "claims[0].text", "a non-empty sentence", None),
    (GOOD.splitlines()[line_of(GOOD, "claims:") - 1],
     "claims:\n  - just a sentence", "claims[0]", "a mapping with keys", None),
    # name: a plain file name (the folder <out>/<name> must stay inside --out)
    ("name: exp4", "name: ../../x", "name", "a plain file name", None),
    ("name: exp4", "name: a/b", "name", "no '/'", None),
    ("name: exp4", "name: .hidden", "name", "not starting with '.'", None),
    ("name: exp4", "name: ''", "name", "a plain file name", None),
    ("name: exp4", "name: 123", "name", "quote it", None),
    ("name: exp4", "name: [exp4]", "name", "a plain file name", None),
    ("name: exp4", "name: " + "x" * 101, "name", "1-100 of letters", None),
    # hypothesis, wandb
    ("hypothesis: >\n  Smaller dim_y is harder and makes patching matter more.",
     'hypothesis: "  "', "hypothesis", "a non-empty sentence", None),
    ("hypothesis: >\n  Smaller dim_y is harder and makes patching matter more.",
     "hypothesis: [a, b]", "hypothesis", "a sentence", None),
    ("  project: lds-tuner", '  project: ""', "wandb.project", "1-128 characters", None),
    ("  project: lds-tuner", "  project: 5", "wandb.project", "a W&B project name", None),
    ("  project: lds-tuner", "  project: team/proj", "wandb.project", "none of /", None),
    # YAML keys: each once (PyYAML keeps the last silently), plain names only
    ("  lr_low: 3.0e-5", "  lr_low: 3.0e-5\n  lr_low: 1.0e-4", "search.lr_low",
     f"first at line {line_of(GOOD, '  lr_low: 3.0e-5')}", None),
    ("name: exp4", "name: exp4\nname: exp5", "name", "each key once", None),
    (DIM_Y, DIM_Y + "\n  data.dim_y: [1, 2]", "grid.data.dim_y", "each key once", None),
    ("    train.steps: 60", "    train.steps: 60\n    train.steps: 40",
     "smoke.fixed.train.steps", "each key once", None),
    (CLAIM_DIR, CLAIM_DIR + "\n    direction: increasing", "claims[0].direction",
     "each key once", None),
    ("  lr_low: 3.0e-5", "  lr_low: 3.0e-5\n  1: 2", "search.1", "a name such as", None),
    ("name: exp4", "name: exp4\nyes: 1", "yes", "a name such as", None),
    # sections that must be mappings
    ("  asha:\n    grace_period: 20", "  asha: 20", "smoke.asha", SECTION_TEXT, None),
    ("smoke:    #", "smoke:\n  grid: 3\n  #", "smoke.grid", SECTION_TEXT, "grid: 3"),
]
BAD_SECTIONS = [  # (section, new body, field, allowed[, indent]): whole sections swapped
    ("search", "search: [1, 2]", "search", SECTION_TEXT),
    ("smoke", "smoke: [tiny]", "smoke", SECTION_TEXT),
    ("search", "search: [1]", "smoke.search", SECTION_TEXT, 2),  # indent 2: under smoke
    ("finals", "finals: 2", "smoke.finals", SECTION_TEXT, 2),
    ("fixed", "fixed: [data.dim_x]", "smoke.fixed", SECTION_TEXT, 2),
    ("asha", "asha: min", "asha", SECTION_TEXT),
    ("finals", "finals: [0, 1]", "finals", SECTION_TEXT),
    ("resources", "resources: 1", "resources", SECTION_TEXT),
    ("wandb", "wandb: lds-tuner", "wandb", SECTION_TEXT),
    ("smoke", "smoke: true", "smoke", SECTION_TEXT),
    ("fixed", "fixed: [data.dim_x]", "fixed", SECTION_TEXT),
    ("grid", "grid: [data.dim_y]", "grid", SECTION_TEXT),
    ("grid", "grid: {}", "grid", "a mapping of dotted config fields"),
    ("search", "search:", "search", "required section is empty"),
    ("asha", "", "asha", "required section is missing"),
    ("claims", "claims: {kind: trend}", "claims", "a list of claims"),
    ("claims", "claims: trend", "claims", "a list of claims"),
]


@pytest.mark.parametrize("old,new,field,allowed,line", BAD, ids=[
    f"{b[2]}:{b[1].strip()[:40]}" for b in BAD])
def test_every_field_is_type_and_range_checked(tmp_path, old, new, field, allowed, line):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = write(tmp_path, text)
    expect_error(path, line_of(text, line or new.splitlines()[-1]), field, allowed)


@pytest.mark.parametrize("section,new,field,allowed,indent",
                         [(*b, 0) if len(b) == 4 else b for b in BAD_SECTIONS])
def test_sections_must_be_mappings(tmp_path, section, new, field, allowed, indent):
    text = swap_section(GOOD, section, new, indent)
    path = write(tmp_path, text)
    line = line_of(text, new) if new else 1
    expect_error(path, line, field, allowed)


@pytest.mark.parametrize("old,new,field,allowed,line", [
    ("    trials_per_cell: 3", "    trials_per_cell: 3.0", "smoke.search.trials_per_cell",
     "an integer", None),
    ("    gpus_per_trial: 0\n", "    gpus_per_trial: 1.5\n", "smoke.resources.gpus_per_trial",
     "a fraction <= 1", None),
    ("    seeds: [0, 1]", "    seeds: [0, 1.5]", "smoke.finals.seeds", SEEDS, None),
    ("    data.dim_x: 8", "    data.dim_x: 8\n    data.dim_y: 2", "grid.data.dim_y",
     "not both", DIM_Y),
    ("    lr_high: 3.0e-2", "    lr_high: 1.0e-4", "smoke.search.lr_high", "> lr_low=0.001",
     None),
])
def test_smoke_values_are_checked_in_the_smoke_profile(tmp_path, old, new, field, allowed, line):
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = write(tmp_path, text)
    experiment.load(str(path))  # the full profile does not use these values
    expect_error(path, line_of(text, line or new.splitlines()[-1]), field, allowed, smoke=True)


def test_whole_file_mistakes(tmp_path):
    for text, line, field, allowed in [
        ("", 1, "<file>", "is empty"),
        ("# only a comment\n", 1, "<file>", "is empty"),
        ("- name: exp4\n", 1, "<file>", "a mapping of sections"),
        ("exp4\n", 1, "<file>", "a mapping of sections"),
        ("name: x\nnmae: y\n", 2, "nmae", "unknown section"),
    ]:
        expect_error(write(tmp_path, text), line, field, allowed)
    text = GOOD.replace("  lr_low: 3.0e-5", "\tlr_low: 3.0e-5")  # a tab
    with pytest.raises(experiment.SearchSpaceError, match=rf"bad.yaml:"
                       rf"{line_of(text, 'lr_low: 3.0e-5')}: not valid YAML: .*\(a tab: YAML "
                       r"indents with spaces only\); allowed:"):
        experiment.load(str(write(tmp_path, text)))
    with pytest.raises(experiment.SearchSpaceError, match=r"bad.yaml:\d+: not valid YAML"):
        experiment.load(str(write(tmp_path, GOOD + "---\nname: two\n")))  # two documents
    with pytest.raises(experiment.SearchSpaceError, match=rf"bad.yaml:{line_of(GOOD, DIM_Y)}: "
                       r"grid.data.dim_y\[1\]: refers to itself"):
        experiment.load(str(write(tmp_path, GOOD.replace(DIM_Y, "  data.dim_y: &a [1, *a]"))))
    with pytest.raises(experiment.SearchSpaceError, match=r"bad.yaml:1: not valid YAML: "
                       "nested too deeply"):
        experiment.load(str(write(tmp_path, "name: " + "[" * 5000 + "]" * 5000 + "\n")))
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: \xff\n")
    with pytest.raises(experiment.SearchSpaceError, match=r"bin.yaml:1: not UTF-8"):
        experiment.load(str(path))


def test_cells_that_would_share_an_id_are_rejected(tmp_path):
    grok = (experiment.SEARCH_SPACES / "grokking.yaml").read_text()
    text = grok.replace('  modular.op: "+"\n', "").replace(
        "  modular.p: [59, 97, 113]", '  modular.p: [59, 97, 113]\n  modular.op: ["+", "*"]')
    expect_error(write(tmp_path, text), line_of(text, "grid:"), "grid",
                 "get the same cell id 'weight_decay=0.3,p=59,op=_'")


def test_friendly_inputs_that_are_accepted(tmp_path):
    # YAML 1.1 reads 1e-5 (no dot) and -.5 as strings: a float field converts them
    exp = experiment.load(str(write(tmp_path, GOOD.replace("  lr_low: 3.0e-5",
                                                              "  lr_low: 1e-5"))))
    assert exp.search.lr_low == 1e-5 and isinstance(exp.search.lr_low, float)
    for gpus in ("0.25", "2", "1", "0"):
        text = GOOD.replace("  gpus_per_trial: auto", f"  gpus_per_trial: {gpus}")
        r = experiment.load(str(write(tmp_path, text))).resources
        assert r.gpus_per_trial == float(gpus) and not r.planned
    r = experiment.load(str(write(tmp_path, GOOD))).resources
    assert r.planned and r.gpus_per_trial == 1.0 and r.gpu_memory_gib is None  # the shipped
    text = GOOD.replace("  gpus_per_trial: auto", "  gpus_per_trial: auto\n  gpu_memory_gib: 80")
    assert experiment.load(str(write(tmp_path, text))).resources.gpu_memory_gib == 80.0
    exp = experiment.load(str(write(tmp_path, swap_section(GOOD, "resources", ""))))
    assert exp.resources == experiment.Resources(1.0, 0.0)  # the defaults
    text = GOOD.replace("  cpus_per_trial: 1", "  cpus_per_trial: 0.5")
    assert experiment.load(str(write(tmp_path, text))).resources.cpus_per_trial == 0.5
    # fixed settings apply together: tie_embeddings may come before input_layer and head
    gpt = (experiment.SEARCH_SPACES / "gpt.yaml").read_text()
    text = gpt.replace("  model.tie_embeddings: true\n", "").replace(
        "  model.input_layer: tokens", "  model.tie_embeddings: true\n  model.input_layer: tokens")
    assert experiment.load(str(write(tmp_path, text))).base.model.tie_embeddings
    # a value impossible on the fixed settings alone is fine when every cell it is in is
    text = GOOD.replace(DIM_Y, "  data.dim_y: [1, 2, 4, 100]\n  data.dim_x: [128, 256]")
    assert len(experiment.load(str(write(tmp_path, text))).cells()) == 4 * 3 * 2


def test_claim_metrics(tmp_path):
    exp = experiment.load(str(write(tmp_path, GOOD)))
    assert [c.metrics for c in exp.claims] == [(), ()]  # the caller uses asha.metric
    shipped = experiment.load("exp4")
    assert {c.metrics for c in shipped.claims} == {("eval/nmse_info", "eval/skill_info")}
    text = GOOD.replace(CLAIM_DIR, CLAIM_DIR + "\n    metrics: [eval/skill, eval/nmse]", 1)
    text = text.replace("    effect_axis: model.patch_size",
                        "    effect_axis: model.patch_size\n    metric: eval/skill")
    exp = experiment.load(str(write(tmp_path, text)))
    assert [c.metrics for c in exp.claims] == [("eval/skill", "eval/nmse"), ("eval/skill",)]
    grok = experiment.load("grokking")
    assert {c.metrics for c in grok.claims} == {("eval/grokking_step",)}


def test_claim_min_effect(tmp_path):
    """A number for a claim on one metric, a mapping for several; none declared: None."""
    assert experiment.load("exp4").claims[0].min_effect_of("eval/nmse_info") is None
    text = GOOD.replace(CLAIM_DIR, CLAIM_DIR + "\n    min_effect: 0.02", 1)
    text = text.replace("    effect_axis: model.patch_size", "    effect_axis: model.patch_size\n"
                        "    metrics: [eval/nmse, eval/skill]\n"
                        "    min_effect: {eval/skill: 0.05, eval/nmse: 1.0e-2}")
    exp = experiment.load(str(write(tmp_path, text)))
    assert exp.claims[0].min_effect_of("eval/nmse") == 0.02  # the asha metric: its only one
    assert exp.claims[1].min_effect_of("eval/skill") == 0.05
    assert exp.claims[1].min_effect_of("eval/nmse") == 0.01


def test_compare_claim_value_and_search_seed():
    assert experiment.SEARCH_SEED == 1_000_000 and "SEARCH_SEED" in experiment.__all__
    assert experiment.load("exp2").claims[0].better == "diagonal"
    assert not hasattr(experiment.Experiment, "cell_config")
    for name in experiment.known():
        assert max(experiment.load(name).finals.seeds) < experiment.SEARCH_SEED


def fixture_experiments() -> list[Path]:
    out = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and {"grid", "hypothesis"} <= set(doc):
            out.append(path)
    return out


@pytest.mark.parametrize("path", [
    *(experiment.SEARCH_SPACES / f"{n}.yaml" for n in experiment.known()),
    *fixture_experiments()], ids=lambda p: p.name)
def test_shipped_and_fixture_experiments_load_with_and_without_smoke(path):
    full, smoke = experiment.load(str(path)), experiment.load(str(path), smoke=True)
    assert full.name == path.stem and smoke.name == f"{path.stem}-smoke"
    assert len(full.cells()) == len(list(itertools.product(*full.grid.values())))
    for exp in (full, smoke):
        assert all(0 <= s < experiment.SEARCH_SEED for s in exp.finals.seeds)

@pytest.mark.parametrize("args,message", [
    (["exp9"], "unknown experiment 'exp9'"),
    (["BAD", "--smoke"], "fixed.data.lambda_val"),
    (["BAD:  cpus_per_trial: 1|  cpus_per_trial: one"], "resources.cpus_per_trial"),
    (["BAD:name: exp4|name: ../../x"], "name: '../../x' is not a plain file name"),
    (["exp1", "--research", "nope:1e-3:1e-2"], "--research nope:1e-3:1e-2: no cell 'nope'"),
    (["exp1", "--research", "lambda=0.99:1e-2:1e-3"], "0 < LOW < HIGH"),
])
def test_cli_rejects_bad_input_before_ray(tmp_path, args, message):
    if args[0].startswith("BAD"):
        old, new = args[0].removeprefix("BAD:").split("|") if ":" in args[0] else (
            "data.lambda_val: 0.96", "data.lambda_val: 1.5")
        assert old in GOOD
        args[0] = str(write(tmp_path, GOOD.replace(old, new, 1)))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "tuner.run", *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Ray" not in res.stdout + res.stderr.replace(message, "")  # nothing started
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert not (tmp_path.parent / "x").exists()  # name ../../x would have escaped --out


ROUTED = (experiment.SEARCH_SPACES / "grokking_routed.yaml").read_text()


@pytest.mark.parametrize("old,new,field,allowed", [
    ("  train.route_reg: entropy", "  train.route_reg: l1", "fixed.train.route_reg", "gini"),
    ("  train.route_reg_weight: [0.0, 1.0, 0.01, 0.1]", "  train.route_reg_weight: [0.0, -1.0]",
     "grid.train.route_reg_weight", "a finite number >= 0"),
    # with eval_every, a combination of two fixed fields: the error names the section
    ("  train.diagnostics_every: 1000", "  train.diagnostics_every: 150",
     "fixed", "a multiple of eval_every=100"),
    ("  train.diagnostics_probes: 8", "  train.diagnostics_probes: 0",
     "fixed.train.diagnostics_probes", ">= 1"),
    ("  model.route_top_k: 0", "  model.route_top_k: 5", "fixed.model.route_top_k",
     "n_routes=4"),
    ("  model.backbone: routed", "  model.backbone: mlp", "fixed",
     "model.backbone in ['routed']"),
    ("  task: modular", "  task: bigram", "fixed", "tasks ['modular']"),
    ("    metric: eval/route_entropy", "    metric: eval/gate_entropy", "claims[0].metric",
     "eval/route_entropy"),
])
def test_routing_and_diagnostics_fields_are_checked(tmp_path, old, new, field, allowed):
    """The new fields fail like every other: file, line, field and what is allowed."""
    assert old in ROUTED
    text = ROUTED.replace(old, new, 1)
    path = write(tmp_path, text)
    line = line_of(text, new) if field != "fixed" else line_of(text, "fixed:")
    expect_error(path, line, field, allowed)
