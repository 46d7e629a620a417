"""The training core: pure JAX (Flax, Optax, orbax), no Ray, Optuna or W&B.

config (RunConfig) -> steps (jitted train/eval steps) -> loop (one run or K vmapped seeds,
evaluations) -> checkpoint (save/resume); seeds says which seed trains on what; cli is
``python -m tuner.train``. ``tests/test_imports.py`` checks that nothing here imports the
service, Ray, Optuna or W&B, or a task module (tasks come by name from ``data.registry``, their
config sections too), and that no import here closes a circle.
"""
