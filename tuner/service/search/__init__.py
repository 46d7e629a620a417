"""Per-cell learning-rate search: one Optuna study per cell (study), the Tune searcher over
all cells (searcher), one ASHA per cell (scheduler), and what the stages read back (results)."""
