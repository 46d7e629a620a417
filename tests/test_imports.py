"""The layers import one way: data never imports models or tuner, models never data or tuner;
the training core never imports the service, Ray, Optuna or W&B (and runs with them
unimportable), nor a task module, nor names a task. No module of the project takes part in an
import circle, counting imports under ``if TYPE_CHECKING:`` and inside functions."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data.registry import SECTIONS, TASKS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "models", "tuner")  # the project's modules (tests and bench import them)


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


# ---- no import circle ------------------------------------------------------------------------


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``packages`` (a package's
    ``__init__.py`` is the package's own name)."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` (at ``path``) imports: top level, in functions and under
    ``if TYPE_CHECKING:`` alike (a type-only import is still an edge a reader follows, and one
    refactor away from a real one); ``from p import x`` counts as ``p.x`` where that is a module.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    wanted = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            wanted |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            wanted |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names}
    out = set()
    for target in wanted:
        while target and target not in modules:  # a name inside a module: the module
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    modules = project_modules(root, packages)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other round in a circle (Tarjan's strongly
    connected components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_the_project():
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 50 and "tuner.core.config" in graph["tuner.core.loop"]
    cycles = import_cycles(graph)
    assert not cycles, [{m: sorted(graph[m] & set(c)) for m in c} for c in cycles]


def test_the_cycle_finder_sees_a_planted_circle(tmp_path):
    """Not vacuous: a circle closed only by a TYPE_CHECKING import and a function-level relative
    import is found, and the module outside it is not reported."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from pkg.sub.c import g\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n"
        "def g():\n    pass\n")
    (pkg / "d.py").write_text("import pkg.a\nfrom pkg.sub import c\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.d"] == {"pkg.a", "pkg.sub.c"}
    assert import_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]


# ---- the training core and the tasks ----------------------------------------------------------

# What tuner/core may import from data: the registry (a task by name, the tasks' RunConfig
# sections) and the contract every task implements. Everything else under data is a task's own
# code, reached only through the registry, so adding or changing a task never touches the core.
CORE_MAY_IMPORT_FROM_DATA = {"data.registry", "data.task"}


def test_the_core_imports_no_task_module():
    graph = import_graph(ROOT, PACKAGES)
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items()
                 if m.startswith("tuner.core") for t in targets
                 if t.split(".")[0] == "data" and t not in CORE_MAY_IMPORT_FROM_DATA)
    assert not bad, bad


def task_names_in_code(path: Path, tasks: set[str], sections: dict[str, set[str]]) -> list[str]:
    """Where the code of ``path`` names a task or a task's section: a string equal to a task or
    section name, a string holding a dotted section field (``"rollout.warmup=..."``, f-string
    parts included), or an attribute or keyword named like a section (``cfg.rollout``).
    Docstrings and comments are prose and left out (the word "text" is not the text task); a
    dotted string counts only with a real field of that section, so ``"data.registry"`` (the
    package) is no hit."""
    tree = ast.parse(path.read_text())
    prose = {id(n.value) for n in ast.walk(tree)
             if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    dotted = re.compile(r"(?<![\w.])(" + "|".join(
        f"{s}\\.(?:{'|'.join(sorted(f))})" for s, f in sorted(sections.items())) + r")\b")
    hits = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in prose):
            if node.value in tasks or node.value in sections:
                hits.append(f"{where} string {node.value!r}")
            elif m := dotted.search(node.value):
                hits.append(f"{where} string naming {m.group(1)}")
        elif isinstance(node, ast.Attribute) and node.attr in sections:
            hits.append(f"{where} attribute .{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg in sections:
            hits.append(f"{where} keyword {node.arg}=")
    return hits


SECTION_FIELDS = {name: {f.name for f in dataclasses.fields(cls)}
                  for name, (_, cls) in SECTIONS.items()}


def test_the_core_never_names_a_task_or_its_section():
    hits = [h for path in sorted((ROOT / "tuner" / "core").rglob("*.py"))
            for h in task_names_in_code(path, set(TASKS), SECTION_FIELDS)]
    assert not hits, hits


def test_the_task_name_check_sees_code_and_not_prose(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text('''"""A module about text: the lds, data.seq_len and cfg.rollout in prose."""
import data.registry  # comment: lds, bigram, cfg.rollout


def f(cfg, x):
    """Reads the text."""
    print("data.registry and the text of it")
    g(cfg.rollout, task="lds", data=1)
    raise ValueError(f"data.seq_len={x} and max(rollout.horizons)")
''')
    hits = task_names_in_code(bad, set(TASKS), SECTION_FIELDS)
    assert sorted(h.split(" ", 1)[1] for h in hits) == [
        "attribute .rollout", "keyword data=", "string 'lds'", "string naming data.seq_len",
        "string naming rollout.horizons"], hits


def test_the_entry_point_sets_rays_import_time_settings_first():
    """Ray and Tune read some settings when imported; ``python -m tuner.run`` sets them
    before anything imports Ray (``ray_start.ENV_DEFAULTS``). Set later, they went unread: under
    ``uv run`` Ray started every worker through ``uv run`` in a venv built in a copy of the
    project."""
    from tuner.service.ray_start import ENV_DEFAULTS

    env = {k: v for k, v in os.environ.items() if k not in ENV_DEFAULTS}
    code = ("import tuner.run\n"
            "from ray._private import ray_constants\n"
            "print(ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
