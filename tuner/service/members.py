"""A trial's members (the rates it trains) and each one's own reports, read from the trial's
config and its results: what W&B logs as one run per member and the viewer draws per member.

A Tune trial trains one rate (a one-rate search trial), a population of rates (``member_<i>/``
keys) or final seeds (of one cell at its rate, ``seed_<s>/`` keys; of a shared program's cells,
``member_<i>/`` keys: :meth:`TrialSpec.prefix`). A member's rows are the results
in which it was evaluated (its own ``step`` equals the report's: a population reports only the
members evaluated there, and a diverged final seed keeps its last step), under the plain names
(``eval/nmse``, ``train_loss``, ...), each with the report's ``training_iteration`` and
``timestamp``. Its state is read from its last row as the searcher tells Optuna (complete,
pruned, diverged), or from how the trial ended.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tuner.service.trial_spec import TrialSpec, member_key, overrides, part

ITERATION = "training_iteration"  # Tune's own key (ray.air.constants.TRAINING_ITERATION)
STATES = ("complete", "pruned", "diverged", "failed")  # how a member ended


@dataclasses.dataclass(frozen=True)
class MemberOf:
    """One rate of a trial. ``prefix`` is its key prefix in the trial's results ("" for a
    one-rate trial); ``number`` its Optuna trial (populations), ``seed`` its final seed."""

    stage: str
    cell: str
    lr: float
    coords: dict[str, Any]
    prefix: str = ""
    index: int | None = None
    number: int | None = None
    seed: int | None = None
    wave: int | None = None
    source: str = ""

    @property
    def label(self) -> str:
        """A short readable name: ``patch=4 lr=0.00316 #7`` or ``patch=4 seed 2``."""
        tail = f"seed {self.seed}" if self.seed is not None else (
            f"lr={self.lr:.3g}" + (f" #{self.number}" if self.number is not None else ""))
        return f"{self.cell} {tail}"


def members_of(config: dict[str, Any]) -> list[MemberOf]:
    """The members of a trial config in any form (pilot trials: none, they are no search)."""
    spec = TrialSpec.of(config)
    if spec.stage == "pilot":
        return []
    if spec.is_population:
        return [MemberOf(spec.stage, m.cell, m.lr, dict(overrides(config, m.cell)),
                         member_key(i, ""), i, m.number, None, spec.wave, m.source)
                for i, m in enumerate(spec.members)]
    if spec.stage == "final":  # one cell's seeds, or the seeds of a shared program's cells
        return [MemberOf("final", m.cell, m.lr, dict(overrides(config, m.cell)),
                         spec.prefix(i), i, None, m.seed, None, "search best")
                for i, m in enumerate(spec.members)]
    m = spec.members[0]
    return [MemberOf(spec.stage, m.cell, m.lr, dict(overrides(config)))]


def member_rows(member: MemberOf, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The member's own rows of a trial's results (module docstring), oldest first."""
    if not member.prefix:
        return list(rows)
    out = []
    for r in rows:
        own = part(r, member.prefix)
        if own and own.get("step") == r.get("step"):
            out.append({**own, ITERATION: r.get(ITERATION), "timestamp": r.get("timestamp")})
    return out


def max_step(config: dict[str, Any]) -> int | None:
    """A population's full budget (its halving rule's ``max_t``); None for other trials."""
    halving = config.get("halving") if isinstance(config, dict) else None
    return int(halving["max_t"]) if halving else None


def member_state(member: MemberOf, last: dict[str, Any] | None, budget: int | None,
                 ended: bool = False, failed: bool = False) -> str | None:
    """How the member ended (one of ``STATES``), None while it runs, as the searcher tells
    Optuna. ``last``: its last row; ``budget``: the search's full budget (a population's
    :func:`max_step`, the experiment's ``asha.max_t`` for a one-rate trial); ``ended`` /
    ``failed``: the trial has ended (by an error). A search member that ends short of the
    budget was stopped (a population's rung, or ASHA): pruned; a final seed: complete."""
    if last is not None and last.get("diverged"):
        return "diverged"
    if last is not None and budget is not None and member.stage != "final":
        if int(last.get("step", -1)) >= budget:
            return "complete"
        if last.get("stopped"):
            return "pruned"
    if not ended:
        return None
    if failed or last is None:
        return "failed"
    return "complete" if member.stage == "final" else "pruned"


def result_rows(path: Path, before: int | None = None) -> list[dict[str, Any]]:
    """The rows of a trial's ``result.json`` (Tune's own record, one JSON line per result),
    one per iteration (the last written: a resumed trial repeats some), oldest first; only
    those before iteration ``before`` if given; a line cut by a kill is skipped."""
    if not path.exists():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        it = row.get(ITERATION) if isinstance(row, dict) else None
        if isinstance(it, int) and (before is None or it < before):
            rows[it] = row
    return [rows[i] for i in sorted(rows)]
