"""Ray cluster on Slurm through Ray's own cluster launcher and autoscaler.

`cluster.yaml` at the repository root names `tuner.slurm.provider.SlurmNodeProvider` as an
external node provider: Ray's autoscaler decides how many workers of which type it needs, and the
provider turns each worker into one `sbatch` job (`scancel` to remove it, `squeue` to see it).

Nothing is imported here on purpose: `tuner` must stay importable on machines without Ray, and
Ray imports the provider by its full module path.
"""
