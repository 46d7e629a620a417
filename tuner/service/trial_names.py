"""Trial actors named in the Ray dashboard by what they train.

Every Tune trial runs in an actor of one class, so the dashboard's Actors page lists identical
rows. Its "Repr" column is the actor instance's ``repr()``, which Ray 2.60 takes exactly once:
right after the actor's ``__init__`` (the actor creation task, ``_raylet.pyx``:
``core_worker.set_actor_repr_name(repr(actor))``), sent to the GCS with that task's reply and
never updated. Tune builds the trainable in ``__init__`` with the trial's config, so a
``__repr__`` over ``self.config`` names the trial there. A reused actor (``reuse_actors=True``)
would keep its first trial's name for every later one; the stages therefore start one actor
per trial unless told to reuse them (``stages.reuse_actors``), and a reused actor is named
only by what stays true for its life (experiment and stage).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuner.service.trial_spec import TrialSpec


def _rate(lr: Any) -> str:
    return f"lr={float(lr):.3g}"


def label(config: dict[str, Any], experiment: str = "") -> str:
    """What one trial trains, in one line: ``<experiment> <stage> <cell> lr=<rate>[ seeds=..]``.

    Args:
        config: The trial's config as Tune hands it to the trainable (a search trial's flat
            ``stage``/``cell``/``lr``; a finals trial nests its spec under ``final``).
        experiment: The experiment's name (not in the config).

    Returns:
        E.g. ``tiny search patch=4 lr=0.00316`` or ``tiny final patch=4 lr=0.00316 seeds=0,1``.
        A population trial (several rates, possibly of several cells, in one program; its
        ``members``: a list of ``{cell, number, lr}``, and its ``wave``) names its wave, K and
        each cell's rates: ``tiny search wave 2 K=8 patch=1:lr=0.0001..0.1 patch=4:...``.
    """
    if not config:  # before Tune has set it
        return experiment or "trial"
    spec = TrialSpec.of(config)
    head = " ".join(p for p in (experiment, spec.stage) if p)
    if spec.is_population:  # K rates over one or more cells
        by_cell: dict[str, list[float]] = {}
        for m in spec.members:
            by_cell.setdefault(m.cell, []).append(m.lr)
        parts = [f"{cell}:lr={min(r):.3g}..{max(r):.3g}" if len(r) > 1 else f"{cell}:{_rate(r[0])}"
                 for cell, r in by_cell.items()]
        return f"{head} wave {spec.wave} K={len(spec.members)} {' '.join(parts)}"
    member = spec.members[0]
    words = [head, member.cell]
    if member.lr == member.lr:  # the pilot's trials carry no rate of their own
        words.append(_rate(member.lr))
    if spec.seeds:
        words.append("seeds=" + ",".join(str(s) for s in spec.seeds))
    return " ".join(words)


def reused_label(config: dict[str, Any], experiment: str = "") -> str:
    """The name of an actor that Tune reuses for later trials: only its experiment and stage
    hold for its whole life (``tiny search (reused worker: trials of any cell)``)."""
    stage = TrialSpec.of(config).stage if config else "trial"
    return " ".join(p for p in (experiment, stage) if p) + " (reused worker: trials of any cell)"


def named(trainable: Callable, experiment: str, reused: bool = False) -> type:
    """``trainable`` (a function trainable) as Tune's class for it, its ``repr`` the trial's
    :func:`label` (:func:`reused_label` when Tune reuses actors). Tune's name for it (folders,
    registry) stays the function's."""
    from ray.tune.trainable import wrap_function

    base = wrap_function(trainable)
    name_of = reused_label if reused else label

    class NamedTrial(base):
        def __repr__(self) -> str:
            return name_of(getattr(self, "config", None) or {}, experiment)

    NamedTrial.__name__ = NamedTrial.__qualname__ = base._name
    return NamedTrial
