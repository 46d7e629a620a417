"""The Ray Tune trainables, checkpointed at every evaluation.

Stage 1: :func:`train_trial`, one trial = one training run of a cell at one learning rate; or
:func:`train_population_trial`, one trial = a population of rates (of one or more cells) in one
vmapped program, halved at rungs (``search.population`` > 1).
Stage 2: :func:`train_finals_trial`, one trial = the final seeds of one cell or of the cells of
one shape (the stage plan), vmapped.

Tune calls them in a worker (reused across trials with ``reuse_actors=True``; the
jitted step lives at module level in ``tuner.core.steps`` with the learning rate traced, so a reused
worker compiles once per cell shape). Every evaluation is reported together with a checkpoint of
the full train state, so a trial that is paused by ASHA, killed with its node, or interrupted with
the driver resumes exactly where it stopped. A diverging run (NaN loss) ends with
``diverged=True`` and a NaN metric: the searcher tells Optuna PRUNED with a NaN (TPE's worst
rank, marked ``diverged``), and it can never be best.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

from data.registry import metric_names
from tuner.core import checkpoint, compile_cache, gpu_share
from tuner.core.config import RunConfig, replace
from tuner.core.loop import DivergedError, MemberRuns, Progress, Run, seed_state, train_members
from tuner.core.seeds import get_field, search_config, seed_config, system_seed_field
from tuner.service import relocate
from tuner.service.trial_spec import TrialSpec, Worker, member_key, overrides

GPUS_KEY = "placement/gpus"  # a result's CUDA_VISIBLE_DEVICES (text: not a metric to plot)


def trial_config(base: RunConfig, config: dict[str, Any]) -> RunConfig:
    """The cell's run at the trial's lr: the experiment's base + the cell's overrides + lr.

    Search trials then take :func:`tuner.core.seeds.search_config` and finals
    :func:`tuner.core.seeds.seed_config` per seed (seeds and systems disjoint between the two).
    """
    return replace(base, **overrides(config), **{"train.lr": float(config["lr"])})


def prepare_worker(config: dict[str, Any]) -> None:
    """Per-process JAX settings, before the first JAX computation of the worker: the GPU
    memory share of a fractional-GPU trial and the experiment's compilation cache."""
    worker = Worker.of(config)
    if worker.gpu_fraction:
        gpu_share.configure(worker.gpu_fraction)
    if worker.jax_cache_dir:
        compile_cache.enable(cache_here(worker.jax_cache_dir))


def cache_here(path: str) -> str:
    """The compilation cache ``path`` of a trial's config, at the experiment folder's current
    place: a trial restored from Tune's snapshot keeps the config it was made with, paths of
    the folder's earlier place included (moved or copied: :mod:`tuner.service.relocate`).
    The folder is where Tune stores the trial (``storage_path`` is the experiment's root,
    re-pointed by Tune on restore)."""
    from ray import tune

    try:
        root = tune.get_context().get_storage().storage_fs_path
    except (RuntimeError, AttributeError):  # not in a Tune session (a direct call)
        return path
    return relocate.in_folder(path, root)


def train_trial(config: dict[str, Any], base: RunConfig) -> None:
    """Tune function trainable; ``base`` is bound with ``tune.with_parameters``."""
    from ray import tune  # imported here: the training core must import without Ray

    prepare_worker(config)
    # no diagnostics in the search: nothing reads them there (the searcher ranks on one metric),
    # and they cost compiles and passes in every trial; the finals and tuner.train log them
    cfg = replace(search_config(trial_config(base, config)), **{"train.diagnostics_every": 0})
    run = Run(cfg)
    state, progress = run.init_state(), Progress.start(1)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state, progress = checkpoint.restore(d, state)
    last_step = int(state.step)

    def on_eval(metrics: dict[str, Any], st) -> None:
        nonlocal last_step
        last_step = metrics["step"]
        _report(tune, metrics, st, progress)

    try:
        run.train(state, on_eval, progress)
    except DivergedError as e:
        tune.report({"step": last_step, "diverged": True, "error": str(e),
                     **dict.fromkeys(metric_names(cfg.task), math.nan)})


def population_configs(base: RunConfig, config: dict[str, Any]) -> list[RunConfig]:
    """Each member's search run: its cell's settings at its rate, diagnostics off (as
    :func:`train_trial`)."""
    return [replace(search_config(replace(base, **overrides(config, m.cell),
                                          **{"train.lr": m.lr})),
                    **{"train.diagnostics_every": 0}) for m in TrialSpec.of(config).members]


def train_population_trial(config: dict[str, Any], base: RunConfig) -> None:
    """Tune function trainable of a population (``tuner.service.search.population``).

    ``config["members"]`` (cell, Optuna trial number, lr each) train together
    (:func:`tuner.core.population.train_population`), halved by the rule in
    ``config["halving"]``. Each evaluation reports every member evaluated there under
    ``member_<i>/...`` with ``stopped`` / ``diverged`` flags (the searcher tells Optuna from
    them), the best live member's metrics under the plain names (status file, W&B curves),
    and a checkpoint of the live members' stacked state and every member's progress.
    """
    from ray import tune

    from tuner.core.population import Population, compact_by_default, held_members, train_population
    from tuner.service.search.halving import SuccessiveHalving

    prepare_worker(config)
    pop = Population(population_configs(base, config))
    halve = SuccessiveHalving.from_dict(config["halving"])
    compact = compact_by_default()
    states, progress = None, None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            progress = checkpoint.read_progress(d)
            if progress.alive:
                held = held_members(progress, len(pop), compact)
                states, progress = checkpoint.restore(d, pop.init_states(held))
    if progress is not None and not progress.alive:
        return  # every member had ended before the checkpoint
    objective = halve.objective

    def on_eval(step: int, prog: Progress, sts) -> None:
        result: dict[str, Any] = {"step": step}
        best = None
        for i, m in enumerate(prog.last):
            if m.get("step") != step:
                continue  # ended at an earlier evaluation
            result |= {member_key(i, k): v for k, v in m.items()}
            result[member_key(i, "stopped")] = bool(m.get("stopped", False))
            value = m.get(halve.metric)
            if not m.get("diverged") and value is not None and math.isfinite(value) and (
                    best is None or objective.better(value, best[halve.metric])):
                best = m
        result |= {k: v for k, v in (best or {}).items() if k.startswith("eval/")}
        result["diverged"] = best is None
        _report(tune, result, sts, prog)

    train_population(pop, on_eval, halve, states=states, progress=progress, compact=compact)


def finals_configs(base: RunConfig, config: dict[str, Any]) -> list[RunConfig]:
    """Each finals member's run: its cell at the cell's best rate, with its seed's own init,
    data and system (:func:`tuner.core.seeds.seed_config`)."""
    return [seed_config(replace(base, **overrides(config, m.cell), **{"train.lr": m.lr}),
                        int(m.seed)) for m in TrialSpec.of(config).members]


def train_finals_trial(config: dict[str, Any], base: RunConfig) -> None:
    """Tune function trainable for stage 2: final seeds in one program.

    A trial trains the seeds of one cell, or of the cells of one shape that the stage plan put
    together (``tuner.service.plan``), each member its cell's best rate on its own system
    (:func:`tuner.core.loop.train_members`); each member's trajectory is its own run's. Each
    evaluation reports every member's metrics under its prefix (:meth:`TrialSpec.prefix`)
    plus their mean over non-diverged members under the plain names (what the status file
    and W&B curves show), with a checkpoint of the stacked state and per-member progress. At
    the full budget each member gets the task's evaluation after training (the LDS rollouts).
    """
    from ray import tune

    prepare_worker(config)
    spec = TrialSpec.of(config)
    runs = MemberRuns(finals_configs(base, config))
    cfg = runs.configs[0]
    states, progress = None, None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            states, progress = checkpoint.restore(d, runs.init_states())
    field = system_seed_field(cfg)
    system_seeds = [get_field(c, field) if field else None for c in runs.configs]

    def on_eval(step: int, prog: Progress, sts) -> None:
        if step == cfg.train.steps and cfg.rollout_after:
            for i, r in enumerate(runs.runs):  # each seed on its own system
                if not prog.diverged(i):
                    prog.last[i] |= r.task.after_training(seed_state(sts, i).params, r.model,
                                                          r.cfg)
        ok = [m for i, m in enumerate(prog.last) if not prog.diverged(i)]
        means = {k: sum(m[k] for m in ok) / len(ok) for k in (ok[0] if ok else {})
                 if k.startswith(("eval/", "diag/")) or k == "train_loss"}
        result = {"step": step, "diverged": not ok, **means}
        for i, (m, sys_seed) in enumerate(zip(prog.last, system_seeds, strict=True)):
            result |= {spec.prefix(i) + k: v for k, v in m.items()}
            result[spec.prefix(i) + "system_seed"] = sys_seed
        _report(tune, result, sts, prog)

    train_members(runs, on_eval, states=states, progress=progress)


def _report(tune, result: dict[str, Any], state, progress: Progress) -> None:
    """``tune.report`` with a checkpoint of ``state`` (every evaluation: resumable anywhere),
    and the GPUs the trial was given (``CUDA_VISIBLE_DEVICES``: where Ray placed it)."""
    result[GPUS_KEY] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    with tempfile.TemporaryDirectory() as d:
        checkpoint.save(os.path.join(d, "state"), state, progress)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(os.path.join(d, "state")))
