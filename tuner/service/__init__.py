"""The tuning service on Ray Tune: experiment files, the two stages, the per-cell search, the
trials, the report, the live status and W&B. Imports the training core, never the reverse."""
