"""Each stage's plan (:mod:`tuner.service.plan.programs`) made from this cluster and card when
the stage first starts, and kept in ``plan.json``: a resumed stage must hand its restored
searcher the same programs, and its trials the same share, whatever the cluster is now.

Inputs, in order of trust: the memory model of each shape measured on the card by ``--pilot``
(XLA's accounting of the real step, cuDNN attention included), else the CPU's upper bound
(:func:`tuner.service.plan.memory.estimate`, a compile per shape in the driver, kept in
``plan.json``); the card's memory from ``resources.gpu_memory_gib``, else the pilot's card,
else ``nvidia-smi`` asked by a small Ray task on a GPU node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuner.service.dirs import ExperimentDirs
from tuner.service.experiment import Experiment
from tuner.service.files import read_json, write_json
from tuner.service.plan.memory import ProgramMemory, estimate
from tuner.service.plan.programs import StagePlan, plan_stage

PROBE_TIMEOUT_S = 60.0
_REMEDY = "delete it: the next run plans its stages again"


class PlanError(Exception):
    """The plan cannot be made (an unknown card, a cell too large for it): nothing started."""


def _saved(dirs: ExperimentDirs) -> dict[str, Any]:
    if dirs.plan.exists():
        return read_json(dirs.plan, _REMEDY)
    return {"memory": {}, "stages": {}}


def probe_card_bytes(timeout_s: float = PROBE_TIMEOUT_S) -> int | None:
    """The smallest card's memory on a GPU node of the cluster (``nvidia-smi`` in a Ray task
    holding a sliver of a GPU), or None when no GPU node answers in time."""
    import ray

    @ray.remote(num_gpus=0.01, num_cpus=0)
    def total_mib() -> list[int]:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        return [int(x) for x in out.split()]

    ref = total_mib.remote()
    try:
        found = ray.get(ref, timeout=timeout_s)
    except Exception:  # no nvidia-smi (logical GPUs), a timeout, a dead node: unknown
        ray.cancel(ref, force=True)
        return None
    return min(found) * 2**20 if found else None


def card_bytes(exp: Experiment, dirs: ExperimentDirs) -> int | None:
    """One card's memory (module docstring), or None if nothing says it."""
    if exp.resources.gpu_memory_gib:
        return int(exp.resources.gpu_memory_gib * 2**30)
    if dirs.pilot.exists():
        found = read_json(dirs.pilot, "delete it, or run --pilot again").get("card_bytes")
        if found:
            return int(found)
    return probe_card_bytes()


def shape_groups(by_shape: dict[str, list[str]], cells: Sequence[str]) -> list[list[str]]:
    """``cells`` grouped by the program they compile to (each group in grid order)."""
    wanted = set(cells)
    return [g for g in ([c for c in group if c in wanted] for group in by_shape.values()) if g]


def memory_models(exp: Experiment, dirs: ExperimentDirs, groups: Sequence[Sequence[str]],
                  saved: dict[str, Any], by_shape: dict[str, list[str]]
                  ) -> dict[str, ProgramMemory]:
    """Per group (its first cell), the memory model of its shape: the pilot's if it measured
    that shape, else the CPU estimate (computed once per shape, kept in ``saved``)."""
    from tuner.service.trials import trial_config

    shape_of = {c: name for name, cells in by_shape.items() for c in cells}
    measured = {}
    if dirs.pilot.exists():
        pilot = read_json(dirs.pilot, "delete it, or run --pilot again")
        measured = {name: s["memory"] for name, s in pilot.get("shapes", {}).items()
                    if s.get("memory")}
    out = {}
    for group in groups:
        shape = shape_of[group[0]]
        if shape in measured:
            out[group[0]] = ProgramMemory.from_dict(measured[shape])
            continue
        if shape not in saved["memory"]:
            from tuner.core.seeds import search_config

            cfg = search_config(trial_config(exp.base, {"overrides": exp.cells()[shape],
                                                        "lr": exp.search.lr_low}))
            print(f"plan: estimating the memory of shape {shape} (a CPU compile)", flush=True)
            saved["memory"][shape] = estimate(cfg).to_dict()
        out[group[0]] = ProgramMemory.from_dict(saved["memory"][shape])
    return out


def stage_plan(exp: Experiment, dirs: ExperimentDirs, name: str, cells: Sequence[str],
               members_per_cell: int, gpus: float | None = None) -> StagePlan:
    """The plan of stage ``name`` (a search round, ``finals``, an added-seeds run): the saved
    one if this stage started before, else a new one, saved and printed. ``gpus``: the
    cluster's (default: asked from Ray)."""
    saved = _saved(dirs)
    if name in saved["stages"]:
        plan = StagePlan.from_dict(saved["stages"][name])
        # the same stage resumed; other cells: its earlier run was set aside (finals after a
        # re-search), so this is a new run of the stage
        if sorted(c for g in plan.groups for c in g) == sorted(cells):
            return plan
    from tuner.service.shapes import shapes

    by_shape = shapes(exp)  # builds every cell's run: once per stage plan
    groups = (shape_groups(by_shape, cells) if exp.search.share_program
              else [[c] for c in cells])
    r = exp.resources
    if gpus is None:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0.0) if r.gpus_per_trial > 0 else 0.0
    if r.gpus_per_trial <= 0 or gpus <= 0:
        plan = plan_stage(name, groups, members_per_cell, {}, None, 0.0)
        if r.gpus_per_trial > 0:  # GPU trials on a cluster with none yet (an autoscaler)
            plan = StagePlan(name, plan.programs, r.gpus_per_trial, None, 0.0, None, "none")
    else:
        card = card_bytes(exp, dirs)
        if card is None:
            raise PlanError(
                f"{exp.path}: the card's memory is unknown (no pilot.json, no resources."
                "gpu_memory_gib, no GPU node answered nvidia-smi within "
                f"{PROBE_TIMEOUT_S:.0f} s); run --pilot first or set resources.gpu_memory_gib")
        memory = memory_models(exp, dirs, groups, saved, by_shape)
        from tuner.service.plan.programs import ProgramTooLarge

        try:
            plan = plan_stage(name, groups, members_per_cell, memory, card, gpus,
                              None if r.planned else r.gpus_per_trial)
        except ProgramTooLarge as e:
            raise PlanError(f"{exp.path}: {e}") from None
    saved["stages"][name] = plan.to_dict()
    write_json(dirs.plan, saved)
    print(f"plan: {plan.summary()}", flush=True)
    return plan


def slots(plan: StagePlan, fallback: int | None) -> int | None:
    """Trials at once: the plan's where it spreads placement, else ``fallback`` (the file's)."""
    if plan.slots is None:
        return fallback
    return plan.slots if fallback is None else min(plan.slots, fallback)

