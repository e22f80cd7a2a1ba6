"""What a training run will do, resolved and checked before any model is built (`trainer.training`).

Everything that can fail on the user's inputs (options that contradict each other, records of the wrong
kind, missing files, a model_dir holding another model) fails here, before the first training step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

from nextvlad.config import ModelConfig
from trainer.config import (
    LABEL_NAMES_FILE,
    MODEL_CONFIG_FILE,
    TRAIN_CONFIG_FILE,
    TrainConfig,
    lr_decay_steps,
    model_dir_path,
)
from trainer.training_data import count_segments

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What the pre-flight resolved, before any model is built: the model, the data and the run's length."""

    model_config: ModelConfig
    train_config: TrainConfig
    train_files: list[str]
    eval_files: list[str]
    num_train: int  # training examples: videos, or rated segments with `segment_labels`
    steps_per_epoch: int
    total_steps: int
    decay_steps: int | None  # between two decays of the paper schedule; None for cosine

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


def check_options(model_config: ModelConfig, train_config: TrainConfig) -> ModelConfig:
    """The model to build (reverse-whitening when --pca_eigenvals is given), or a ValueError for options
    that contradict each other or the Keras backend."""
    import keras

    cfg, tc = model_config, train_config
    if tc.pca_eigenvals and not cfg.reverse_whitening:
        cfg = cfg.replace(reverse_whitening=True)  # the model reverse-whitens; its scale is a model weight
    if cfg.reverse_whitening and not tc.pca_eigenvals and not tc.init_model:
        raise ValueError(
            "reverse_whitening is set but --pca_eigenvals is not: pass the dataset's yt8m_pca/eigenvals.npy"
        )
    backend = keras.backend.backend()
    if tc.export_saved_model and backend != "tensorflow":
        raise ValueError(
            f"--export_saved_model writes a TF SavedModel and needs KERAS_BACKEND=tensorflow (the backend is "
            f"{backend!r}); model.keras is written on every backend"
        )
    return cfg


def check_records(cfg: ModelConfig, tc: TrainConfig) -> tuple[list[str], list[str]]:
    """The training and evaluation files, after validating the first records of each pattern."""
    from trainer import checks

    record_args = dict(input_format=cfg.input_format, num_classes=cfg.num_classes, max_frames=cfg.max_frames)
    train_files = checks.check_records(
        tc.train_data, flag="--train_data", max_records=tc.check_records, **record_args
    )
    eval_files = (
        checks.check_records(tc.eval_data, flag="--eval_data", max_records=tc.check_records, **record_args)
        if tc.eval_data
        else []
    )
    return train_files, eval_files


def load_rgb_scale(cfg: ModelConfig, tc: TrainConfig) -> Any:
    """The reverse-whitening scale from --pca_eigenvals (a placeholder of ones when --init_model brings
    its own, None without reverse whitening)."""
    import numpy as np
    import tensorflow as tf

    from nextvlad import yt8m

    if tc.pca_eigenvals:
        if not tf.io.gfile.exists(tc.pca_eigenvals):
            raise FileNotFoundError(f"--pca_eigenvals: {tc.pca_eigenvals} does not exist")
        return yt8m.reverse_whitening_scale(tc.pca_eigenvals)
    if cfg.reverse_whitening:
        return np.ones(cfg.rgb_size, np.float32)  # a placeholder: --init_model's scale is copied in
    return None


def plan_run(cfg: ModelConfig, tc: TrainConfig, train_files: list[str], eval_files: list[str]) -> RunPlan:
    """The run's length: steps per epoch from the training examples, total steps from epochs or max_steps."""
    from nextvlad import yt8m

    num_train = count_segments(cfg, train_files) if tc.segment_labels else yt8m.count_records(train_files)
    steps_per_epoch = tc.steps_per_epoch or max(1, math.ceil(num_train / tc.batch_size))
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    decay_steps = lr_decay_steps(tc, total_steps) if tc.schedule == "paper" else None
    return RunPlan(cfg, tc, train_files, eval_files, num_train, steps_per_epoch, total_steps, decay_steps)


def classifier_prior(plan: RunPlan) -> tuple[Any, int]:
    """The classifier's initial bias (class frequencies, see `trainer.prior`) and the records counted."""
    cfg, tc = plan.model_config, plan.train_config
    if tc.init_model:
        return None, 0  # the classifier's bias comes with the initial weights
    if tc.prior_records:
        from trainer.prior import label_prior

        return label_prior(plan.train_files, num_classes=cfg.num_classes, max_records=tc.prior_records)
    from trainer.prior import mean_frequency_prior

    return mean_frequency_prior(cfg.num_classes), 0


def write_configs(plan: RunPlan, *, prior_records: int, label_names: str | None) -> None:
    """`config.json`, `train_config.json` (with what the run resolved) and `label_names.csv`."""
    import tensorflow as tf

    from trainer.callbacks import write_text

    tc, model_dir = plan.train_config, plan.train_config.model_dir
    tf.io.gfile.makedirs(model_dir)
    write_text(model_dir_path(model_dir, MODEL_CONFIG_FILE), plan.model_config.to_json() + "\n")
    resolved = {
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "lr_decay_steps": plan.decay_steps,
        "warmup_steps": round(tc.warmup_fraction * plan.total_steps) if plan.decay_steps is None else None,
        "prior_records": prior_records,
        "train_records": plan.num_train,
    }
    write_text(
        model_dir_path(model_dir, TRAIN_CONFIG_FILE),
        json.dumps({**tc.to_dict(), "resolved": resolved}, indent=2) + "\n",
    )
    if label_names is not None:
        write_text(model_dir_path(model_dir, LABEL_NAMES_FILE), label_names)


def log_plan(plan: RunPlan, prior_records: int) -> None:
    tc = plan.train_config
    if plan.decay_steps:
        schedule = f"lr {tc.learning_rate:.3g} x {tc.lr_decay_rate:.2f} every {plan.decay_steps} steps"
    else:
        schedule = (
            f"lr warm-up to {tc.learning_rate:.3g} over {tc.warmup_fraction:.0%} of the run, then cosine"
        )
    logger.info(
        "%d training videos in %d files; %d steps of %d (%d per epoch, %d epochs); %s; "
        "classifier bias from the label frequencies of %d records",
        plan.num_train, len(plan.train_files), plan.total_steps, tc.batch_size, plan.steps_per_epoch,
        plan.num_epochs, schedule, prior_records,
    )  # fmt: skip
