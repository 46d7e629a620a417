"""Shared test settings: JAX on CPU, float32 matmuls at full precision for numeric comparisons."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
