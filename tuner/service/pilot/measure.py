"""The pilot's Tune trainable: one cell's shape measured piece by piece, as the real trials run it.

It goes through the same functions as a search trial and a finals trial (``Run``, the jitted
chunk of ``eval_every`` steps, ``Run.evaluate``, ``checkpoint.save``, the vmapped seeds, the
task's evaluation after training), in a worker set up the same way (GPU share, the experiment's
compilation cache), so what it measures is what the experiment will pay, and the compiles it
does warm the cache the experiment then loads.
"""

from __future__ import annotations

import resource
import tempfile
import time
from typing import Any

import jax
import numpy as np

from tuner.core import checkpoint, steps
from tuner.core.config import RunConfig
from tuner.core.loop import Progress, Run, SeedRuns, seed_state
from tuner.core.seeds import search_config
from tuner.service.trial_spec import Worker
from tuner.service.trials import prepare_worker, trial_config

STEADY_CHUNKS = 2  # timed chunks after the first (compile) one
PILOT_CHUNK = 200  # steps per timed chunk: steady timing without training a whole interval


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - t


def _peak_bytes() -> tuple[int, int | None]:
    """(this trial's peak memory, the device's memory) on a GPU; (peak RSS, None) on a CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), stats.get("bytes_limit")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None


def _chunks(step_fn, state, n: int) -> tuple[Any, float, float]:
    """(state, first chunk's seconds, steady seconds per step) over 1 + STEADY_CHUNKS chunks."""
    (state, _), first = _timed(step_fn, state, n)
    t = time.perf_counter()
    for _ in range(STEADY_CHUNKS):
        state, _ = step_fn(state, n)
    jax.block_until_ready(state)
    return state, first, (time.perf_counter() - t) / (STEADY_CHUNKS * n)


def measure(config: dict[str, Any], base: RunConfig) -> dict[str, Any]:
    """Seconds and bytes of one cell's search trial and finals trial (``ShapeCost`` fields)."""
    prepare_worker(config)
    cfg = search_config(trial_config(base, config))
    n = min(cfg.train.eval_every, cfg.train.steps, PILOT_CHUNK)
    run = Run(cfg)

    def search_chunk(state, k):
        return steps.train_steps(state, run.task, run.hparams, spec=run.spec, n_steps=k)

    state, first, step_s = _chunks(search_chunk, run.init_state(), n)
    run.evaluate(state)  # compiles the evaluation
    t = time.perf_counter()
    run.evaluate(state)
    eval_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        checkpoint.save(f"{d}/state", state, Progress.start(1))
        checkpoint_s = time.perf_counter() - t
    # a later trial of the worker: a new run of the same shape, the jit cache hit
    t = time.perf_counter()
    again = Run(cfg)
    (_, _), _ = _timed(steps.train_steps, again.init_state(), again.task, again.hparams,
                       spec=again.spec, n_steps=n)
    warm_start_s = max(0.0, time.perf_counter() - t - n * step_s)

    finals_cfg = trial_config(base, config)
    runs = SeedRuns(finals_cfg, config["seeds"])

    def finals_chunk(states, k):
        return steps.train_steps_seeds(states, runs.tasks, runs.run.hparams, spec=runs.run.spec,
                                       n_steps=k)

    states, finals_first, finals_step_s = _chunks(finals_chunk, runs.init_states(), n)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        checkpoint.save(f"{d}/state", states, Progress.start(len(runs.seeds)))
        finals_checkpoint_s = time.perf_counter() - t
    after_training_s = 0.0
    if finals_cfg.rollout_after:
        first_run = runs.runs[0]
        t = time.perf_counter()
        first_run.task.after_training(seed_state(states, 0).params, first_run.model,
                                      finals_cfg)
        after_training_s = time.perf_counter() - t
    population = _population(config, base, n)
    peak, device = _peak_bytes()
    fraction = Worker.of(config).gpu_fraction
    if device and fraction:  # the pool back to the card it is a share of
        from tuner.core.gpu_share import HEADROOM

        device = int(device / (HEADROOM * fraction))
    population["pool_bytes"] = _pool_bytes() or 0
    return {"step_s": step_s, "compile_s": max(0.0, first - n * step_s),
            "warm_start_s": warm_start_s, "eval_s": eval_s, "checkpoint_s": checkpoint_s,
            "finals_step_s": finals_step_s,
            "finals_compile_s": max(0.0, finals_first - n * finals_step_s),
            "finals_checkpoint_s": finals_checkpoint_s, "after_training_s": after_training_s,
            "peak_bytes": peak, "device_bytes": device or 0, **population}


def _pool_bytes() -> int | None:
    """This process's JAX memory pool on a GPU (None on a CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats["bytes_limit"]) if "bytes_limit" in stats else None


def _population(config: dict[str, Any], base: RunConfig, n: int) -> dict[str, Any]:
    """A search population's step: up to ``population_size`` members (rates over the range) of
    the cell in one program, as :func:`tuner.service.trials.train_population_trial` trains
    them, and the program's memory per member.

    The program's memory is measured first from XLA's accounting of the step compiled for
    this device (:func:`tuner.service.plan.memory.measure_on_device`, no run), and the size
    timed is the largest that fits this trial's pool: a program too big for its slot is a
    finding (``population_fits``), not an error. Should XLA still run out of memory, the size
    is halved until it runs.
    """
    from tuner.core.population import Population, compact_by_default
    from tuner.core.split import is_out_of_memory
    from tuner.service.plan.memory import measure_on_device
    from tuner.service.plan.programs import SAFETY

    cfg = search_config(trial_config(base, config))
    memory = measure_on_device(cfg)
    pool = _pool_bytes()
    wanted = int(config.get("population_size", 1))
    fits = memory.members_within(pool * SAFETY) if pool else wanted
    out: dict[str, Any] = {"memory": memory.to_dict(), "population_wanted": wanted,
                           "population_fits": fits}
    size = max(1, min(wanted, fits))
    if wanted <= 1:
        return out
    while True:
        lrs = [float(x) for x in np.geomspace(config["lr_low"], config["lr_high"], size)]
        pop = Population([search_config(trial_config(base, {**config, "lr": lr}))
                          for lr in lrs])
        members = list(range(size))
        tasks, hps = pop.stacked(members)

        def chunk(states, k, tasks=tasks, hps=hps, pop=pop):
            return steps.train_steps_population(states, tasks, hps, spec=pop.spec, n_steps=k)

        try:
            _, first, step_s = _chunks(chunk, pop.init_states(members), n)
            break
        except Exception as e:  # XlaRuntimeError: its class moves between jaxlib releases
            if not is_out_of_memory(e) or size == 1:
                raise
            out.setdefault("population_oom_at", []).append(size)
            size = max(1, size // 2)
    return {**out, "population_size": size, "population_step_s": step_s,
            "population_compile_s": max(0.0, first - n * step_s),
            "population_compacts": compact_by_default()}


def pilot_trial(config: dict[str, Any], base: RunConfig) -> None:
    """Tune function trainable: one report with everything :func:`measure` found."""
    from ray import tune

    tune.report({"step": 1, **measure(config["pilot"], base)})
