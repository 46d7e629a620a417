"""A vmapped program that runs out of device memory is split, and its members carry on.

The service sizes its programs before they run (``tuner.service.plan``), from XLA's accounting
of the step; this is the net under that plan. When a chunk of a population or of shared finals
fails with XLA's ``RESOURCE_EXHAUSTED``, :class:`Splitter` runs the same chunk again on the
members in 2, 4, ... contiguous pieces, one program each, and keeps the smallest piece count
that fits for the rest of the run. Members of a vmapped program are independent, so every
member's trajectory is the one it had in the whole program (``tests/test_split.py``): the
search's picks do not change. A single member that does not fit raises :class:`MemberTooLarge`
with the shape and what to change, rather than retrying.

``TUNER_TEST_OOM_ABOVE=N`` (tests only) fails every program of more than N members as an
out-of-memory error at run time would at worst (its donated state deleted), so the split can be
tested on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

TEST_OOM_ENV = "TUNER_TEST_OOM_ABOVE"


class MemberTooLarge(RuntimeError):
    """One member's program alone does not fit the device."""


def is_out_of_memory(error: BaseException) -> bool:
    """XLA's out-of-memory error (``XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory ...``)."""
    return "RESOURCE_EXHAUSTED" in str(error)


def _members(tree: Any) -> int:
    return int(jax.tree.leaves(tree)[0].shape[0])


def _piece(tree: Any, start: int, stop: int) -> Any:
    return jax.tree.map(lambda x: x[start:stop], tree)


class Splitter:
    """Calls ``fn(states, tasks, hps, **static)`` (stacked members on axis 0), split into
    pieces after an out-of-memory error (module docstring).

    Args:
        describe: Words naming the program (its shape), for :class:`MemberTooLarge`.
    """

    def __init__(self, describe: str = "the model"):
        self.pieces = 1
        self.describe = describe
        self._ran: set[tuple[int, int]] = set()  # (members, pieces) that ran once

    def __call__(self, fn: Callable[..., tuple[Any, Any]], states, tasks, hps, **static
                 ) -> tuple[Any, Any]:
        n = _members(states)
        # ``fn`` donates ``states``: an out-of-memory error at run time can leave them deleted.
        # A program that ran once allocates the same buffers each time, so only the first call
        # of a (members, pieces) program keeps a host copy to retry from.
        backup = None if (n, self.pieces) in self._ran else jax.device_get(states)
        while True:
            try:
                # run-time errors surface when the result is awaited: wait here (the caller
                # reads the chunk's metrics next anyway)
                out = jax.block_until_ready(self._call(fn, states, tasks, hps, n, **static))
                self._ran.add((n, self.pieces))
                return out
            except Exception as e:  # XlaRuntimeError's class moves between jaxlib releases
                if not is_out_of_memory(e):
                    raise
                if backup is not None and any(
                        getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(states)):
                    print("the out-of-memory error deleted the program's donated state: "
                          "retrying from its host copy", flush=True)
                    states = jax.device_put(backup)
                if self.pieces >= n:
                    raise MemberTooLarge(
                        f"one member of {self.describe} does not fit the device even alone "
                        f"({str(e).splitlines()[0][:300]}); lower train.batch_size (or raise "
                        "train.grad_accum), the model's size or train.eval_batch, or give "
                        "each trial a whole GPU (resources.gpus_per_trial: 1)") from e
                self.pieces = min(n, self.pieces * 2)
                print(f"out of device memory with {-(-n // (self.pieces // 2))} members in one "
                      f"program: splitting it into {self.pieces} pieces", flush=True)

    def _call(self, fn, states, tasks, hps, n: int, **static):
        limit = os.environ.get(TEST_OOM_ENV)
        size = -(-n // self.pieces)
        if limit and size > int(limit):
            for x in jax.tree.leaves(states):  # the worst a run-time error leaves: the donated
                x.delete()                     # state gone
            raise RuntimeError(f"RESOURCE_EXHAUSTED: Out of memory (test hook {TEST_OOM_ENV}="
                               f"{limit}: a program of {size} members)")
        if self.pieces == 1:
            return fn(states, tasks, hps, **static)
        outs = [fn(_piece(states, a, min(a + size, n)), _piece(tasks, a, min(a + size, n)),
                   _piece(hps, a, min(a + size, n)), **static) for a in range(0, n, size)]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)
