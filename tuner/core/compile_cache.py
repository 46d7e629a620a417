"""JAX's persistent compilation cache, shared by the trials of an experiment (or of several:
``python -m tuner.run --compile-cache``).

Trials of a cell share their compiled programs in memory when Ray reuses a worker; the disk cache
extends that across worker processes (and restarts), so only the first process to meet a shape
pays for its compilation. Thresholds are zero so that even the small programs of smoke runs are
cached.
"""

from __future__ import annotations

from pathlib import Path


def enable(cache_dir: str | Path) -> None:
    """Points this process's JAX at ``cache_dir`` (idempotent; call before the first compile)."""
    import jax

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
