"""One grid cell's Optuna study in its own journal file, addressed by trial number.

The journal is written as events happen, so it is the authority on what was asked and told;
every other record of the search (Tune's snapshot, the scheduler's rungs) is rebuilt from it or
checked against it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tuner.service import relocate
from tuner.service.objective import Objective
from tuner.service.search.journal_repair import repair_torn_tail

TUNE_ID_ATTR = "tune_trial_id"  # Optuna user attribute: the Tune trial that now holds it
DIVERGED_ATTR = "diverged"  # Optuna user attribute of a trial whose metric turned non-finite


class CellStudy:
    """One cell's Optuna study in its own journal file, addressed by trial number.

    Uses only Optuna's public ``Study``/``BaseStorage`` API, so the file stays readable by
    ``optuna-dashboard <file>``.

    Args:
        path: Journal file; created if missing, reused (``load_if_exists``) otherwise.
        name: Study name (the cell id).
        direction: "minimize" or "maximize".
        sampler_for: Builds the sampler from the number of trials already in the study (the
            sampler's state is not persisted; it is re-seeded before every ask).
    """

    def __init__(
        self,
        path: Path,
        name: str,
        direction: str,
        sampler_for: Callable[[int], optuna.samplers.BaseSampler],
    ) -> None:
        self.path = path
        self._sampler_for = sampler_for
        repaired = repair_torn_tail(path)  # a driver killed mid-append leaves a cut record
        if repaired:
            print(repaired, flush=True)
        self.storage = JournalStorage(JournalFileBackend(str(path)))
        self.study = optuna.create_study(
            study_name=name,
            storage=self.storage,
            sampler=sampler_for(0),
            direction=direction,
            load_if_exists=True,
        )
        self._study_id = self.storage.get_study_id_from_name(name)
        if self.trials():
            self.study.sampler = sampler_for(len(self.trials()))

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def frozen(self, number: int) -> FrozenTrial:
        return self.storage.get_trial(self._storage_id(number))

    def ask_lr(self, low: float, high: float) -> tuple[int, float]:
        """A new trial's lr. The sampler is re-seeded from the number of trials so far before
        every ask, so the n-th ask of a cell draws the same lr from the same history whether
        or not the driver was restarted in between (a restart re-opens the study)."""
        self.study.sampler = self._sampler_for(len(self.trials()))
        trial = self.study.ask({"lr": FloatDistribution(low, high, log=True)})
        return trial.number, float(trial.params["lr"])

    def report(self, number: int, step: int, value: float) -> None:
        """``trial.report(value, step)`` on a live trial; repeated steps are ignored."""
        storage_id = self._storage_id(number)
        frozen = self.storage.get_trial(storage_id)
        if frozen.state.is_finished() or step in frozen.intermediate_values:
            return
        self.storage.set_trial_intermediate_value(storage_id, step, value)

    def tell(self, number: int, state: TrialState, value: float | None) -> None:
        self.study.tell(number, value, state=state, skip_if_finished=True)

    def mark_diverged(self, number: int, step: int) -> None:
        """Records a NaN at ``step``, the ``diverged`` attribute and a violated constraint on a
        live trial (then told PRUNED).

        TPE ranks trials complete first, then pruned by the last step reached (later is better,
        ``optuna.samplers._tpe.sampler._get_pruned_trial_score``), then infeasible ones: a NaN
        alone would rank a rate that diverged at step 20,000 above every trial ASHA stopped at
        3,000. The constraint ``diverged = 1`` (``Trial.set_constraint``) makes the trial
        infeasible, worst whatever its step, so TPE steers away from diverging rates; a FAIL
        trial is ignored by TPE, which then kept proposing them.
        """
        storage_id = self._storage_id(number)
        if self.storage.get_trial(storage_id).state.is_finished():
            return
        self.storage.set_trial_intermediate_value(storage_id, step, math.nan)
        self.storage.set_trial_user_attr(storage_id, DIVERGED_ATTR, True)
        optuna.trial.Trial(self.study, storage_id).set_constraint(DIVERGED_ATTR, 1.0)

    def set_attrs(self, number: int, **attrs) -> None:
        """User attributes of a trial (JSON values), e.g. where its rate was proposed."""
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(self._storage_id(number), key, value)

    def tag(self, number: int, tune_trial_id: str) -> None:
        self.storage.set_trial_user_attr(self._storage_id(number), TUNE_ID_ATTR, tune_trial_id)

    def _storage_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id, number)


def tpe_sampler(seed: int, cell_index: int, n_startup: int, n_existing: int
                ) -> optuna.samplers.TPESampler:
    """A cell's TPE sampler, seeded from (seed, cell, trials so far): a re-opened study (driver
    restart) must not replay the random stream from its start, which would re-ask its first
    rates. ``constant_liar``: trials asked while others run do not all land on one spot."""
    state = int(np.random.SeedSequence([seed, cell_index, n_existing]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=state, n_startup_trials=n_startup, constant_liar=True)


def open_studies(study_dir: Path, cells: Iterable[str], direction: str, seed: int,
                 n_startup: int) -> dict[str, CellStudy]:
    """One :class:`CellStudy` per cell under ``study_dir`` (created), TPE per
    :func:`tpe_sampler`. The searchers call it at construction and after unpickling (Tune
    pickles them without the open storages)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    return {cell: CellStudy(study_dir / f"{cell}.journal", cell, direction,
                            functools.partial(tpe_sampler, seed, i, n_startup))
            for i, cell in enumerate(cells)}


class JournalStudies:
    """A searcher's per-cell studies, reopened after unpickling: Tune pickles its searcher
    (``tuner.pkl``) without the open journal storages. A folder moved or copied since is
    reopened at its new place: the pickled paths (the journals' folder, the trials'
    compilation cache) are re-pointed first (:mod:`tuner.service.relocate`), so no journal is
    ever opened, or made, at the old one. Subclasses set ``_study_dir``,
    ``_cells``, ``_metric``, ``_mode``, ``_seed`` and ``_n_startup``, then call
    :meth:`_open_studies`."""

    _study_dir: Path
    _cells: dict
    _metric: str
    _mode: str
    _seed: int
    _n_startup: int

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_studies"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(relocate.repoint(state))
        self._studies = self._open_studies()

    @property
    def objective(self) -> Objective:
        """What the studies optimise (Tune's ``Searcher`` keeps metric and mode apart)."""
        return Objective(self._metric, self._mode)

    def _open_studies(self) -> dict[str, CellStudy]:
        return open_studies(self._study_dir, self._cells, self.objective.direction, self._seed,
                            self._n_startup)
