"""The layers import one way: data never imports models or tuner, models never data or tuner;
the training core never imports the service, Ray, Optuna or W&B (and runs with them
unimportable)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, top-level or inside functions, absolute names (imports
    under ``if TYPE_CHECKING:`` only name types and are left out)."""
    out = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


RULES = [  # (folder, forbidden module prefixes)
    ("data", ("tuner", "models", "ray", "optuna", "wandb")),
    ("models", ("tuner", "data", "ray", "optuna", "wandb")),
    ("tuner/core", ("tuner.service", "tuner.slurm", "ray", "optuna", "wandb")),
]


@pytest.mark.parametrize("folder,forbidden", RULES)
def test_no_import_runs_back_up_the_layers(folder, forbidden):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in imports_of(path):
            if name.split(".")[0] in {f.split(".")[0] for f in forbidden} and any(
                    name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad


def test_the_rule_sees_a_violation(tmp_path):
    """The scan is not vacuous: a function-level import of the service is found."""
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from tuner.service import stages\n")
    assert "tuner.service.stages" in imports_of(bad)


BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('ray', 'optuna', 'wandb'):
            raise ImportError(f'{name} is blocked for this test')
sys.meta_path.insert(0, Block())
"""


def test_training_core_trains_with_ray_optuna_wandb_unimportable(tmp_path):
    script = BLOCK + f"""
from tuner.core import cli, checkpoint, loop, steps, seeds, config
cfg = config.replace(config.RunConfig(), **{{
    "data.dim_x": 4, "data.seq_len": 16, "model.n_layers": 1, "model.d_model": 16,
    "model.n_heads": 2, "model.d_ff": 32, "train.steps": 4, "train.eval_every": 2,
    "train.batch_size": 4, "train.eval_batch": 8, "rollout.warmup": 8,
    "rollout.horizons": (1, 4), "rollout.n_sequences": 8, "out_dir": {str(tmp_path)!r}}})
summary = cli.run(cfg)
assert summary["eval/nmse"] > 0
import sys
assert not any(m.split('.')[0] in ('ray', 'optuna', 'wandb') for m in sys.modules)
print("OK")
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
