"""The LDS next-observation task as the trainer sees it: batches, the normalized loss, metrics.

All baselines are exact expectations from the Kalman module, computed once on the host and held
as arrays, so the task is a pytree that jitted steps take as an argument (one compile per shape).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from data import kalman, lds, metrics
from data.lds_rollout import RolloutConfig, describe_memory, evaluate_rollouts

PATCH_SIZES = (1, 2, 4, 8, 16, 32)  # models.config's allowed patch sizes, for the hint


def check_patch(seq_len: int, patch_size: int) -> None:
    """Raises unless ``patch_size`` divides ``seq_len`` (the model reads whole patches)."""
    if seq_len % patch_size:
        raise ValueError(
            f"model.patch_size={patch_size} must divide data.seq_len={seq_len}; allowed: "
            f"{[q for q in PATCH_SIZES if seq_len % q == 0]}")


@flax.struct.dataclass
class LDSTask:
    """A fixed system plus its per-position baselines; ``cfg`` and ``patch_size`` are static."""

    system: lds.System
    impulse_TxYxX: jax.Array  # C A^k, k < T: sampling as one convolution (lds.sample_parallel)
    kf_T: jax.Array  # KF one-step expected error per position (the SPEC's nmse denominator)
    kf_info_T: jax.Array  # KF error with the same information as a patch-P model
    zero_T: jax.Array  # error of predicting 0
    cfg: lds.LDSConfig = flax.struct.field(pytree_node=False)
    patch_size: int = flax.struct.field(pytree_node=False, default=1)

    @classmethod
    def create(cls, cfg: lds.LDSConfig, patch_size: int = 1) -> LDSTask:
        check_patch(cfg.seq_len, patch_size)
        a, c = lds.make_system_np(cfg)
        exact = lds.System(A=a, C=c, sigma=np.float64(cfg.sigma))
        as32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return cls(system=lds.make_system(cfg),
                   impulse_TxYxX=as32(lds.impulse_response(exact, cfg.seq_len)),
                   kf_T=as32(kalman.one_step_mse(exact, cfg.seq_len)),
                   kf_info_T=as32(kalman.patched_mse(exact, cfg.seq_len, patch_size)),
                   zero_T=as32(kalman.zero_mse(exact, cfg.seq_len)),
                   cfg=cfg, patch_size=patch_size)

    # the rollout scores per horizon (after training): what the report draws as curves
    CURVE = {"prefix": "eval/score_t+", "se_prefix": "eval/score_se_t+", "reference": 1.0,
             "title": "Rollouts", "x": "horizon h (generated steps after the warmup)",
             "y": "model h-step error / KF h-step error",
             "about": "model h-step error / KF h-step error after the warmup, generated from "
                      "the model's own predictions (SPEC section 3)"}
    # see data.registry for these declarations
    METRICS = ("nmse", "skill", "nmse_info", "skill_info", "info_cost")
    REPORTED = ("nmse_info", "skill_info", "nmse", "skill")
    HIGHER_IS_BETTER = ("skill", "skill_info")
    SYSTEM_METRICS = ("info_cost",)  # properties of the system, the same for any model
    SYSTEM_TEXT = ("`info_cost` = error of the Kalman filter that sees only what a patch-P "
                   "model sees / error of the full filter: what patching costs any predictor")
    LEARNING_CHECK = ("skill_info", 0.05)  # better than predicting 0 by 5% of the reachable gap
    SYSTEM_SEED = "data.system_seed"
    MILESTONES = ()

    # its RunConfig sections (--data.*, --rollout.*); see data.task.Task
    CONFIG = {"data": lds.LDSConfig, "rollout": RolloutConfig}

    @classmethod
    def check_config(cls, cfg) -> None:
        """Patches tile the sequence, the rollout warmup and its longest horizon: the model
        reads and generates whole patches."""
        p = cfg.model.patch_size
        check_patch(cfg.data.seq_len, p)
        if cfg.rollout.warmup % p or cfg.rollout.n_steps % p:
            raise ValueError(f"rollout.warmup={cfg.rollout.warmup} and max(rollout.horizons)="
                             f"{cfg.rollout.n_steps} must be multiples of model.patch_size={p}")

    @classmethod
    def from_run_config(cls, cfg) -> LDSTask:
        return cls.create(cfg.data, cfg.model.patch_size)

    @property
    def dim_y(self) -> int:
        return self.cfg.dim_y

    @property
    def io_dim(self) -> int:
        """Features per position the model reads and predicts."""
        return self.cfg.dim_y

    def dummy_input(self) -> jax.Array:
        return jnp.zeros((1, self.cfg.seq_len, self.cfg.dim_y), jnp.float32)

    def sample(self, key: jax.Array, batch: int) -> jax.Array:
        """A training batch: y_BxTxY (the model reads it whole; it is causal)."""
        return lds.sample_parallel(self.system, self.impulse_TxYxX, key, batch)

    eval_sample = sample  # held-out data comes from the same system (another key)

    @staticmethod
    def inputs(y_BxTxY: jax.Array) -> jax.Array:
        return y_BxTxY

    @staticmethod
    def eval_stats(pred_BxTxY: jax.Array, y_BxTxY: jax.Array) -> jax.Array:
        """Per-position squared error, (T,): everything the metrics need."""
        return metrics.per_position_error(pred_BxTxY, y_BxTxY)

    def nmse_curve(self, err_T) -> np.ndarray:
        """Per-position nmse, for plots."""
        return np.asarray(err_T) / np.asarray(self.kf_T)

    def loss(self, pred_BxTxY: jax.Array, y_BxTxY: jax.Array) -> jax.Array:
        """Squared error normalized by the KF's per-position error, averaged over y_2..y_T."""
        diff = pred_BxTxY.astype(jnp.float32) - y_BxTxY.astype(jnp.float32)
        err_BxT = jnp.sum(diff**2, -1) / self.kf_T
        return jnp.mean(err_BxT[:, metrics.FIRST_SCORED :])

    def eval_metrics(self, err_T: jax.Array) -> dict[str, jax.Array]:
        """Averaged metrics from the per-position model error (mean over held-out sequences).

        ``nmse`` / ``skill`` compare with the full Kalman filter; ``nmse_info`` / ``skill_info``
        with the filter that sees what a patch-P model sees, so they measure the model's own
        shortfall. ``info_cost`` (patch-limited KF error / KF error) is what patching costs
        any predictor on this system: a property of the system, not of the model.
        """
        return {
            "nmse": metrics.nmse(err_T, self.kf_T),
            "skill": metrics.skill(err_T, self.zero_T, self.kf_T),
            "nmse_info": metrics.nmse(err_T, self.kf_info_T),
            "skill_info": metrics.skill(err_T, self.zero_T, self.kf_info_T),
            "info_cost": metrics.nmse(self.kf_info_T, self.kf_T),
        }

    def after_training(self, params, model, cfg) -> dict[str, float]:
        """The rollout evaluation (SPEC section 3) as ``cfg.rollout`` (``cfg`` the RunConfig)
        sets it."""
        return evaluate_rollouts(params, self, model, cfg.rollout)

    @staticmethod
    def after_training_plan(model, cfg) -> str:
        """The rollouts' memory estimate and chunking, printed before they run."""
        return describe_memory(model, cfg.rollout)

    def zero_predictor_metrics(self) -> dict[str, float]:
        """What predicting 0 scores in expectation: the bar a learning claim must clear."""
        return {k: float(v) for k, v in self.eval_metrics(self.zero_T).items()}
