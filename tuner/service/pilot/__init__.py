"""The pilot mode: measure an experiment's shapes on its cluster, project its wall time."""
