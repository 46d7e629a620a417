"""Experiment folders read into pandas tables for the viewer (no Panel here: testable alone);
one module per thing read, gathered here as the page's one import.

Only files the service already writes are read (``tuner.service.dirs`` names them), so there is
no second format to keep in step. While an experiment runs, its stage result files
(``search_best.json``, ``search_trials.csv``, ``finals.json``, ``report/``) do not exist yet;
the same tables are then built from what is written as it happens: the per-cell Optuna journals
(``studies/``, the search's one record), Ray Tune's trial folders (``params.json`` and
``result.json``, one JSON line per evaluation) and ``status.json``. A half-written last line of
a ``result.json`` is skipped, so a read never fails on a trial that is reporting.

- :mod:`tuner.view.folders`: which folders are experiments, the file cache, ``status.json``;
- :mod:`tuner.view.search`: the search's trials, best rates, landscape, rate map;
- :mod:`tuner.view.trials`: Tune's trial folders per member: curves, timeline;
- :mod:`tuner.view.finals`: the final seeds and their curves after training;
- :mod:`tuner.view.grid`: per-cell tables (the grid, the comparison of experiments);
- :mod:`tuner.view.report`: cost, claims and the summary.
"""

from tuner.view.finals import finals, rollouts
from tuner.view.folders import (
                                FileCache,
                                Folder,
                                NotAnExperiment,
                                find_folders,
                                open_folder,
                                stage,
                                status,
)
from tuner.view.grid import cells, compare
from tuner.view.report import claims, cost, summary
from tuner.view.search import (
                                KINDS,
                                LANDSCAPE_COLUMNS,
                                TRIAL_COLUMNS,
                                best_lr,
                                chosen,
                                landscape,
                                rate_map,
                                search_trials,
)
from tuner.view.trials import curve_metrics, curves, log_scale_fits, timeline

__all__ = ["KINDS", "LANDSCAPE_COLUMNS", "TRIAL_COLUMNS", "FileCache", "Folder",
           "NotAnExperiment", "best_lr", "cells", "chosen", "claims", "compare", "cost",
           "curve_metrics", "curves", "find_folders", "finals", "landscape", "log_scale_fits",
           "open_folder", "rate_map", "rollouts", "search_trials", "stage", "status", "summary",
           "timeline"]
