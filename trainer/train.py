"""Train a NeXtVLAD model (single or the mixture with distillation) on YouTube-8M TFRecords.

Run (a small model on a synthetic corpus, about a minute on two CPU cores):

    python -m nextvlad.synthetic --output /tmp/synthetic --num_videos 2000 --num_classes 20
    python -m trainer.train --preset demo --train_data '/tmp/synthetic/*-0000[0-2]-*' \\
        --eval_data '/tmp/synthetic/*-00003-*' --model_dir /tmp/runs/demo --epochs 3

The paper's model on frame-level data, or the video-level model on the public video-level records:

    python -m trainer.train --preset paper --train_data 'train*.tfrecord' --eval_data 'validate*.tfrecord' \\
        --model_dir runs/paper --pca_eigenvals yt8m_pca/eigenvals.npy
    python -m trainer.train --preset video --train_data 'video/train*.tfrecord' --model_dir runs/video

Fine-tune a trained frame-level model on the rated 5-frame segments of the 2019 segment release (the
model comes from --init_model's config.json; --eval_data reports segment mAP@100000):

    python -m trainer.train --segment_labels --init_model runs/paper --train_data 'segments/train*.tfrecord' \
        --eval_data 'segments/validate*.tfrecord' --model_dir runs/paper-segments --epochs 2

Any `ModelConfig` field can be overridden (`--cluster_size 64 --mix_number 3 ...`); `--help` lists them.
Everything goes into `--model_dir`: `config.json` (the `ModelConfig`: `build_model(ModelConfig.from_json(
path))` rebuilds the model), `train_config.json`, `checkpoints/`, `logs/` (TensorBoard), `history.csv`
(one row per epoch), `metrics.json` (final evaluation and speed) and `model.keras`, the serving model
(outputs `predictions` and `embedding`). Killed at any point, the same command resumes from the last
checkpoint with the same global step and optimizer state.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before TensorFlow is imported (via keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import math
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from nextvlad.config import CLASSIFIERS, INPUT_FORMATS, POOLINGS, ModelConfig

logger = logging.getLogger(__name__)

MODEL_CONFIG_FILE = "config.json"
TRAIN_CONFIG_FILE = "train_config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
LABEL_NAMES_FILE = "label_names.csv"
PAPER_DECAY_EXAMPLES = 2_500_000  # the paper decays the learning rate every 2.5M examples
PAPER_LEARNING_RATE = 2e-4  # the paper's Adam learning rate: the default of --schedule paper
MIN_DECAYS_PER_RUN = 5  # shorter runs decay more often, so that they still anneal (see TrainConfig)
SCHEDULES = ("cosine", "paper")
# Training defaults of each preset that differ from TrainConfig's, chosen on the development split (the
# README's "Training defaults" table lists them and a test holds the two together; BENCHMARKS.md has the
# runs). An explicit flag always wins.
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "video": dict(epochs=6),
}
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: data, optimisation schedule, outputs. The model itself is a `ModelConfig`."""

    train_data: tuple[str, ...]  # TFRecord glob(s), local or gs://
    model_dir: str  # outputs and checkpoints; re-running with the same dir resumes
    eval_data: tuple[str, ...] = ()  # held-out TFRecord glob(s), evaluated after every epoch
    batch_size: int = 160  # global batch (the paper: 80 per GPU on 2 GPUs)
    epochs: int = 5  # passes of `steps_per_epoch` steps
    max_steps: int | None = None  # stop after this many global steps (overrides `epochs`)
    steps_per_epoch: int | None = None  # default: one pass over the training records
    # `cosine`: linear warm-up from 0 to `learning_rate` over `warmup_fraction` of the run, then cosine
    # decay to 0 at the run's last step. `paper`: the paper's staircase, ×`lr_decay_rate` every
    # `lr_decay_examples` examples from `learning_rate` (which then defaults to 2e-4 on the CLI).
    schedule: str = "cosine"
    learning_rate: float = 1e-3  # Adam's peak (cosine) or initial (paper) learning rate
    warmup_fraction: float = 0.05  # cosine: share of the run's steps spent warming up
    lr_decay_rate: float = 0.8  # paper: staircase decay factor ...
    lr_decay_examples: int | None = None  # ... every this many examples; default min(2.5M, run / 5)
    # Training records read to set the classifier's initial bias to each class's log-odds (0: the same
    # frequency, 3 labels / num_classes, for every class).
    prior_records: int = 100_000
    clipnorm: float = 1.0  # gradient-norm clipping, per variable
    label_smoothing: float = 0.0  # 0 in the paper
    seed: int = 0  # weights, dropout and shuffling
    pca_eigenvals: str | None = None  # yt8m_pca/eigenvals.npy: reverse-whiten rgb (paper §3.3)
    mixed_precision: bool = False  # mixed_float16 on GPU, mixed_bfloat16 on CPU
    distribution: str = "none"  # tf.distribute: none, mirrored (one host) or multi_worker (TF_CONFIG)
    checkpoint_steps: int = 500  # a checkpoint every this many steps, and at every epoch end
    keep_checkpoints: int = 2  # newest checkpoints kept
    eval_batch_size: int | None = None  # default: batch_size
    shuffle_buffer: int = 4096  # records
    check_records: int = 64  # records of each data pattern validated before training
    frame_bucket: int | None = None  # pad frames to a multiple of this (default: 32 on JAX/GPU, else off)
    export_saved_model: bool = False  # also write a TF SavedModel to model_dir/saved_model
    label_names: str | None = None  # label_id,label_name CSV, copied next to the model
    # Start from this trained model's weights (its model_dir; the model is its config.json), e.g. a
    # video-level model to fine-tune on segment labels.
    init_model: str | None = None
    # Train on the rated 5-frame segments of the records (2019 segment release) instead of whole videos:
    # the rated classes' present/absent are the targets, unrated classes are masked out of the loss.
    segment_labels: bool = False
    verbose: bool = True  # progress bars

    def __post_init__(self) -> None:
        for name in ("train_data", "eval_data"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad field and what would fix it."""

        def fail(message: str) -> None:
            raise ValueError(f"Invalid TrainConfig: {message}")

        if not self.train_data:
            fail("train_data is empty; pass --train_data 'path/train*.tfrecord'")
        if not self.model_dir:
            fail("model_dir is empty; pass --model_dir DIR")
        for name in ("batch_size", "epochs", "checkpoint_steps", "keep_checkpoints", "shuffle_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"{name}={value!r}; expected a positive integer")
        for name in ("max_steps", "steps_per_epoch", "lr_decay_examples", "eval_batch_size", "frame_bucket"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                fail(f"{name}={value!r}; expected a positive integer or None")
        if not isinstance(self.check_records, int) or self.check_records < 0:
            fail(f"check_records={self.check_records!r}; expected an integer >= 0")
        if not self.learning_rate > 0:
            fail(f"learning_rate={self.learning_rate!r}; expected > 0")
        if self.schedule not in SCHEDULES:
            fail(f"schedule={self.schedule!r}; expected one of {SCHEDULES}")
        if not 0 <= self.warmup_fraction < 1:
            fail(f"warmup_fraction={self.warmup_fraction!r}; expected 0 <= value < 1")
        if (
            isinstance(self.prior_records, bool)
            or not isinstance(self.prior_records, int)
            or self.prior_records < 0
        ):
            fail(f"prior_records={self.prior_records!r}; expected an integer >= 0")
        if not 0 < self.lr_decay_rate <= 1:
            fail(f"lr_decay_rate={self.lr_decay_rate!r}; expected 0 < rate <= 1")
        if not self.clipnorm > 0:
            fail(f"clipnorm={self.clipnorm!r}; expected > 0")
        if not 0 <= self.label_smoothing < 1:
            fail(f"label_smoothing={self.label_smoothing!r}; expected 0 <= value < 1")
        if self.distribution not in DISTRIBUTIONS:
            fail(f"distribution={self.distribution!r}; expected one of {DISTRIBUTIONS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)


# --------------------------------------------------------------------------------------------------
# Schedule, backend and distribution helpers
# --------------------------------------------------------------------------------------------------


def lr_decay_steps(train_config: TrainConfig, total_steps: int) -> int:
    """Steps between two ×`lr_decay_rate` decays of the learning rate.

    The paper decays every 2.5M examples, over runs of tens of millions of examples. A run shorter
    than 5 × 2.5M examples decays every `total examples / 5` instead, so it still anneals through
    the same ~5 decays a long run makes in its last stretch; `lr_decay_examples` overrides both.
    """
    examples = train_config.lr_decay_examples
    if examples is None:
        examples = min(PAPER_DECAY_EXAMPLES, total_steps * train_config.batch_size / MIN_DECAYS_PER_RUN)
    return max(1, round(examples / train_config.batch_size))


def learning_rate_schedule(train_config: TrainConfig, total_steps: int) -> Any:
    """The Keras learning-rate schedule of `train_config.schedule` for a run of `total_steps` steps.

    `cosine` scales with the run: a linear warm-up from 0 to `learning_rate` over `warmup_fraction` of
    the steps, then a cosine decay to 0 at `total_steps`, whatever the run's length. `paper` is the
    paper's staircase (`learning_rate` × `lr_decay_rate` every `lr_decay_steps` steps), made for 460k
    steps on 5M videos.
    """
    import keras

    if train_config.schedule == "paper":
        return keras.optimizers.schedules.ExponentialDecay(
            train_config.learning_rate,
            decay_steps=lr_decay_steps(train_config, total_steps),
            decay_rate=train_config.lr_decay_rate,
            staircase=True,
        )
    warmup = round(train_config.warmup_fraction * total_steps)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(train_config.learning_rate, decay_steps=total_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, total_steps - warmup),
        warmup_target=train_config.learning_rate,
        warmup_steps=warmup,
    )


def _has_gpu() -> bool:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.devices()[0].platform == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def _make_strategy(distribution: str) -> Any:
    """The tf.distribute strategy for `distribution` (None for "none")."""
    if distribution == "none":
        return None
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"--distribution {distribution} uses tf.distribute, which needs KERAS_BACKEND=tensorflow "
            f"(the backend is {keras.backend.backend()!r}); set it, or use --distribution none"
        )
    import tensorflow as tf

    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _is_chief(strategy: Any) -> bool:
    """Only the chief of a multi-worker job writes to model_dir."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


# --------------------------------------------------------------------------------------------------
# Files in model_dir
# --------------------------------------------------------------------------------------------------


def _path(model_dir: str, *names: str) -> str:
    return "/".join([model_dir.rstrip("/"), *names])


def _read_label_names(path: str, num_classes: int) -> str:
    """Validates a label names CSV (`label_id,label_name` or the dataset's `vocabulary.csv`) and returns
    it as a `label_id,label_name` CSV, the form the model_dir keeps."""
    import csv
    import io

    from nextvlad.records import read_label_names

    names = read_label_names(path)  # raises with the file's name and the accepted formats
    bad = sorted(i for i in names if not 0 <= i < num_classes)
    if bad:
        raise ValueError(
            f"--label_names: {path} names label ids {bad[:5]} outside [0, {num_classes}); "
            "is it the vocabulary of this data (check --num_classes)?"
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label_id", "label_name"])
    writer.writerows(sorted(names.items()))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Data and evaluation
# --------------------------------------------------------------------------------------------------


def _bucket_frames(dataset: Any, multiple: int, max_frames: int) -> Any:
    """Pads each batch's frame axis up to a multiple of `multiple`, so a compiler (XLA) sees few shapes."""
    import tensorflow as tf

    def pad(features, labels):
        frames = tf.shape(features["rgb"])[1]
        target = tf.maximum(tf.minimum((frames + multiple - 1) // multiple * multiple, max_frames), frames)
        padding = [[0, 0], [0, target - frames], [0, 0]]
        features = dict(
            features, rgb=tf.pad(features["rgb"], padding), audio=tf.pad(features["audio"], padding)
        )
        return features, labels

    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _float32_serving_model(network: Any, config: ModelConfig) -> Any:
    """The serving model in float32 (a mixed-precision network is rebuilt and its weights copied)."""
    import keras
    import numpy as np

    from nextvlad.model import build_model, serving_model

    if keras.mixed_precision.global_policy().name == "float32":
        return serving_model(network)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        # The reverse-whitening scale is a weight: copied below with the others.
        placeholder = np.ones(config.rgb_size, np.float32) if config.reverse_whitening else None
        fresh = build_model(config, rgb_scale=placeholder, name=network.name)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    fresh.set_weights(network.get_weights())
    return serving_model(fresh)


def build_training_model(
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    total_steps: int,
    label_prior: Any = None,
    rgb_scale: Any = None,
) -> Any:
    """The network wrapped with its loss (`trainer.losses.TrainingModel`), compiled with Adam.

    Adam on `learning_rate_schedule(train_config, total_steps)`, gradients clipped to norm `clipnorm` per
    variable; the optimizer's variables are created, so a checkpoint can be loaded into it right away.
    Under a `mixed_float16` global policy Keras wraps the optimizer in a `LossScaleOptimizer`. Call inside
    a `tf.distribute` scope to distribute it.

    Args:
        model_config: the network.
        train_config: optimiser settings (`schedule`, `learning_rate`, `warmup_fraction`, `lr_decay_rate`,
            `clipnorm`, `label_smoothing`).
        total_steps: the run's length in steps, over which the schedule runs.
        label_prior: class frequencies (`[C]`, or one for all) for every classifier's initial bias (see
            `trainer.prior`); None keeps a zero bias (0.5 for every class).
        rgb_scale: the reverse-whitening scale, stored in the model; required when
            `model_config.reverse_whitening`.

    Returns:
        The compiled `TrainingModel`; its `network` attribute is the model from `build_model`.
    """
    import keras

    from nextvlad.model import build_model
    from trainer.losses import TrainingModel
    from trainer.prior import set_classifier_prior

    network = build_model(model_config, rgb_scale=rgb_scale)
    if label_prior is not None:
        set_classifier_prior(network, label_prior)
    model = TrainingModel(
        network, model_config, label_smoothing=train_config.label_smoothing, name="training"
    )
    schedule = learning_rate_schedule(train_config, total_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=train_config.clipnorm))
    model.optimizer.build(model.trainable_variables)
    return model


def train(model_config: ModelConfig, train_config: TrainConfig) -> dict[str, Any]:
    """Trains (or resumes training) a model and writes everything into `train_config.model_dir`.

    Args:
        model_config: the model to train (e.g. `ModelConfig.preset("paper")`).
        train_config: data, schedule and outputs.

    Returns:
        What `metrics.json` holds: final evaluation (`gap`, `hit_at_one`, `perr`, `map`, `num_videos`;
        None without eval data), `epochs`, `global_step`, `initial_step` (where this run resumed),
        `train_seconds` and `examples_per_second` of this run, `num_parameters` and the output paths.

    Raises:
        FileNotFoundError: a data pattern, eigenvalue or label-name file does not exist.
        ValueError: records of the wrong kind or with out-of-range labels, a model_dir holding another
            model, or an inconsistent option; raised before any training step.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from nextvlad import yt8m
    from nextvlad.model import count_trainable_parameters, serving_model
    from trainer import checks
    from trainer.callbacks import (
        ScalarSummaries,
        TrainingMonitor,
        data_error,
        evaluate_predictions,
        predict_dataset,
        write_text,
    )
    from trainer.checkpoints import CheckpointManager

    cfg, tc = model_config, train_config
    if tc.pca_eigenvals and not cfg.reverse_whitening:
        cfg = cfg.replace(reverse_whitening=True)  # the model reverse-whitens; its scale is a model weight
    if cfg.reverse_whitening and not tc.pca_eigenvals and not tc.init_model:
        raise ValueError(
            "reverse_whitening is set but --pca_eigenvals is not: pass the dataset's yt8m_pca/eigenvals.npy"
        )
    start = time.perf_counter()
    backend = keras.backend.backend()
    if tc.export_saved_model and backend != "tensorflow":
        raise ValueError(
            f"--export_saved_model writes a TF SavedModel and needs KERAS_BACKEND=tensorflow (the backend is "
            f"{backend!r}); model.keras is written on every backend"
        )
    strategy = _make_strategy(tc.distribution)
    chief = _is_chief(strategy)

    # Pre-flight: everything that can be checked before the model is built.
    record_args = dict(input_format=cfg.input_format, num_classes=cfg.num_classes, max_frames=cfg.max_frames)
    train_files = checks.check_records(
        tc.train_data, flag="--train_data", max_records=tc.check_records, **record_args
    )
    eval_files = (
        checks.check_records(tc.eval_data, flag="--eval_data", max_records=tc.check_records, **record_args)
        if tc.eval_data
        else []
    )
    rgb_scale = None
    if tc.pca_eigenvals:
        if not tf.io.gfile.exists(tc.pca_eigenvals):
            raise FileNotFoundError(f"--pca_eigenvals: {tc.pca_eigenvals} does not exist")
        rgb_scale = yt8m.reverse_whitening_scale(tc.pca_eigenvals)
    elif cfg.reverse_whitening:
        rgb_scale = np.ones(cfg.rgb_size, np.float32)  # a placeholder: --init_model's scale is copied in
    label_names = _read_label_names(tc.label_names, cfg.num_classes) if tc.label_names else None
    model_dir = tc.model_dir
    checkpoints = CheckpointManager(_path(model_dir, "checkpoints"), keep=tc.keep_checkpoints, writer=chief)
    checks.check_model_dir(
        model_dir, cfg, config_name=MODEL_CONFIG_FILE, has_checkpoints=checkpoints.exists()
    )

    num_train = _count_segments(cfg, train_files) if tc.segment_labels else yt8m.count_records(train_files)
    steps_per_epoch = tc.steps_per_epoch or max(1, math.ceil(num_train / tc.batch_size))
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    decay_steps = lr_decay_steps(tc, total_steps) if tc.schedule == "paper" else None
    if tc.init_model:
        prior, prior_records = None, 0  # the classifier's bias comes with the initial weights
    elif tc.prior_records:
        from trainer.prior import label_prior

        prior, prior_records = label_prior(
            train_files, num_classes=cfg.num_classes, max_records=tc.prior_records
        )
    else:
        from trainer.prior import mean_frequency_prior

        prior, prior_records = mean_frequency_prior(cfg.num_classes), 0
    output_dir = model_dir if chief else tempfile.mkdtemp(prefix="nextvlad-worker-")
    if chief:
        tf.io.gfile.makedirs(model_dir)
        write_text(_path(model_dir, MODEL_CONFIG_FILE), cfg.to_json() + "\n")
        write_text(
            _path(model_dir, TRAIN_CONFIG_FILE),
            json.dumps(
                {
                    **tc.to_dict(),
                    "resolved": {
                        "steps_per_epoch": steps_per_epoch,
                        "total_steps": total_steps,
                        "lr_decay_steps": decay_steps,
                        "warmup_steps": round(tc.warmup_fraction * total_steps)
                        if decay_steps is None
                        else None,
                        "prior_records": prior_records,
                        "train_records": num_train,
                    },
                },
                indent=2,
            )
            + "\n",
        )
        if label_names is not None:
            write_text(_path(model_dir, LABEL_NAMES_FILE), label_names)
    logger.info(
        "%d training videos in %d files; %d steps of %d (%d per epoch, %d epochs); %s; "
        "classifier bias from the label frequencies of %d records",
        num_train, len(train_files), total_steps, tc.batch_size, steps_per_epoch, num_epochs,
        f"lr {tc.learning_rate:.3g} x {tc.lr_decay_rate:.2f} every {decay_steps} steps" if decay_steps
        else f"lr warm-up to {tc.learning_rate:.3g} over {tc.warmup_fraction:.0%} of the run, then cosine",
        prior_records,
    )  # fmt: skip

    previous_policy = keras.mixed_precision.global_policy()
    policy = ("mixed_float16" if _has_gpu() else "mixed_bfloat16") if tc.mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(tc.seed)
    try:
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            model = build_training_model(
                cfg, tc, total_steps=total_steps, label_prior=prior, rgb_scale=rgb_scale
            )
            network = model.network
            if tc.init_model:
                load_initial_weights(network, tc.init_model)
            restored = checkpoints.restore(model)
        initial_step = 0
        if restored is not None:
            iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
            if restored.iterations is not None and iterations != restored.iterations:
                raise ValueError(
                    f"The optimizer state in {restored.path} could not be restored (saved at iteration "
                    f"{restored.iterations}, loaded {iterations}); was --mixed_precision changed? "
                    "Re-run with the original options, or pick a new --model_dir."
                )
            initial_step = restored.step
            logger.info("resumed from %s (global step %d)", restored.path, initial_step)
        serving = serving_model(network)

        frame_bucket = tc.frame_bucket or (32 if backend == "jax" or _has_gpu() else None)
        if tc.segment_labels:
            frame_bucket = None  # segments all have the same length
            train_dataset = yt8m.make_segment_dataset(
                train_files,
                batch_size=tc.batch_size,
                num_classes=cfg.num_classes,
                shuffle=True,
                shuffle_buffer=tc.shuffle_buffer,
                repeat=True,
                seed=tc.seed + initial_step,
                drop_remainder=True,
            )
        else:
            train_dataset = yt8m.make_dataset(
                train_files,
                input_format=cfg.input_format,
                batch_size=tc.batch_size,
                num_classes=cfg.num_classes,
                max_frames=cfg.max_frames,
                shuffle=True,
                shuffle_buffer=tc.shuffle_buffer,
                repeat=True,
                seed=tc.seed + initial_step,  # a resumed run must not replay the examples it already saw
                drop_remainder=True,
            )
        if cfg.input_format == "frame" and frame_bucket and frame_bucket > 1:
            train_dataset = _bucket_frames(train_dataset, frame_bucket, cfg.max_frames)
        eval_dataset = None
        if eval_files and not tc.segment_labels:  # segment mAP is computed once, after training
            eval_dataset = yt8m.make_dataset(
                eval_files,
                input_format=cfg.input_format,
                batch_size=tc.eval_batch_size or tc.batch_size,
                num_classes=cfg.num_classes,
                max_frames=cfg.max_frames,
            )
            if cfg.input_format == "frame" and frame_bucket and frame_bucket > 1:
                eval_dataset = _bucket_frames(eval_dataset, frame_bucket, cfg.max_frames)

        monitor = TrainingMonitor(
            checkpoints=checkpoints,
            step=initial_step,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            checkpoint_steps=tc.checkpoint_steps,
            serving=serving,
            eval_dataset=eval_dataset,
            history_path=_path(model_dir, HISTORY_FILE) if chief else None,
        )
        callbacks = [monitor, ScalarSummaries(_path(output_dir, "logs"), monitor)]
        _fit(model, train_dataset, monitor, callbacks, initial_step, total_steps, steps_per_epoch, num_epochs,
             verbose=tc.verbose, num_classes=cfg.num_classes)  # fmt: skip

        # Final evaluation: reuse the last epoch's when it was at the final step.
        final = monitor.last_eval if monitor.last_eval_step == total_steps else None
        if final is None and eval_dataset is not None:
            try:
                final = evaluate_predictions(*predict_dataset(serving, eval_dataset))
            except tf.errors.InvalidArgumentError as e:
                raise data_error(e, "--eval_data", cfg.num_classes) from None
        monitor_step = monitor.step
        if chief:
            exported = _float32_serving_model(network, cfg)
            tmp = _path(model_dir, "tmp-model.keras")
            exported.save(tmp)
            tf.io.gfile.rename(tmp, _path(model_dir, MODEL_FILE), overwrite=True)
            if tc.export_saved_model:
                exported.export(_path(model_dir, "saved_model"), format="tf_saved_model", verbose=False)
            if tc.segment_labels and eval_files:
                final = _segment_evaluation(exported, _path(model_dir, MODEL_FILE), eval_files, tc)
        num_parameters = count_trainable_parameters(network)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    examples = monitor.steps_run * tc.batch_size
    result: dict[str, Any] = {
        **(final or dict.fromkeys(("gap", "hit_at_one", "perr", "map", "num_videos"))),
        "epochs": monitor_step / steps_per_epoch,
        "global_step": monitor_step,
        "initial_step": initial_step,
        "total_steps": total_steps,
        "train_seconds": round(monitor.train_seconds, 3),
        "examples_per_second": round(examples / monitor.train_seconds, 2) if monitor.train_seconds else None,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "num_parameters": num_parameters,
        "batch_size": tc.batch_size,
        "backend": backend,
        "mixed_precision": policy,
        "model": _path(model_dir, MODEL_FILE),
        "eval_data": list(tc.eval_data),
    }
    if chief:
        write_text(_path(model_dir, METRICS_FILE), json.dumps(result, indent=2) + "\n")
    return result


def load_initial_weights(network: Any, init_model: str) -> None:
    """Copies a trained model's weights into `network`, layer by layer (matched by name and shape).

    Args:
        network: a model from `nextvlad.build_model` of the same `ModelConfig` as `init_model`.
        init_model: the trained model's model_dir (or its `.keras` file).

    Raises:
        ValueError: a layer with weights is missing from the trained model or has other shapes.
    """
    from nextvlad.serving import load_model, resolve_model_file

    source = load_model(resolve_model_file(init_model))
    layers = {layer.name: layer for layer in source.layers}
    for layer in network.layers:
        if not layer.weights:
            continue
        other = layers.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is None or [tuple(w.shape) for w in other.weights] != shapes:
            raise ValueError(
                f"--init_model {init_model}: its layer {layer.name!r} is missing or has other weight shapes "
                f"than this model's {shapes}; the model must be built from the init model's config.json"
            )
        layer.set_weights(other.get_weights())
    logger.info("initial weights from %s", init_model)


def _count_segments(cfg: ModelConfig, train_files: list[str]) -> int:
    """Rated segments of the training records (the examples of --segment_labels), or a clear error."""
    from nextvlad.segments import count_rated_segments

    if cfg.input_format != "frame":
        raise ValueError("--segment_labels trains on frames of rated segments: it needs a frame-level model")
    count = count_rated_segments(train_files)
    if not count:
        raise ValueError(
            "--segment_labels: the --train_data records carry no segment ratings (segment_start_times, "
            "segment_labels, segment_scores); pass segment-rated records (the 2019 validation set, or "
            "`python -m nextvlad.synthetic --segments`)"
        )
    return count


def _segment_evaluation(serving: Any, path: str, eval_files: list[str], tc: TrainConfig) -> dict[str, Any]:
    """Segment mAP@100000 of the trained model on --eval_data (`trainer.segment_evaluation`)."""
    from nextvlad.serving import describe_model
    from trainer.segment_evaluation import evaluate_segments

    evaluation = evaluate_segments(
        serving, describe_model(serving, path), eval_files, batch_size=tc.eval_batch_size, progress=tc.verbose
    )
    return evaluation.metrics


def _fit(
    model: Any,
    dataset: Any,
    monitor: Any,
    callbacks: list,
    initial_step: int,
    total_steps: int,
    steps_per_epoch: int,
    num_epochs: int,
    *,
    verbose: bool,
    num_classes: int,
) -> None:
    """Runs `fit` from `initial_step` to `total_steps`; a resumed run first finishes its partial epoch."""
    import tensorflow as tf

    from trainer.callbacks import data_error

    if initial_step >= total_steps:
        logger.info("already trained for %d steps; nothing left to train", initial_step)
        return
    epoch, done = divmod(initial_step, steps_per_epoch)
    segments = []
    if done:
        segments.append((epoch, steps_per_epoch - done, True))
        epoch += 1
    if epoch < num_epochs:
        segments.append((epoch, steps_per_epoch, False))
    try:
        for first_epoch, steps, only_one_epoch in segments:
            if monitor.step >= total_steps:
                break
            monitor.stop_after_epoch = only_one_epoch
            model.fit(
                dataset,
                initial_epoch=first_epoch,
                epochs=num_epochs,
                steps_per_epoch=min(steps, total_steps - monitor.step),
                callbacks=callbacks,
                verbose=1 if verbose else 0,
                shuffle=False,  # the tf.data pipeline shuffles
            )
    except tf.errors.InvalidArgumentError as e:
        raise data_error(e, "--train_data", num_classes) from None


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _model_field_help() -> dict[str, str]:
    """Each ModelConfig field's comment in config.py, as --help text."""
    try:
        source = inspect.getsource(ModelConfig)
    except (OSError, TypeError):
        return {}
    helps: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^(\w+): [\w\[\], |.]+ = [^#]*?(?:#\s*(.*))?$", stripped)
        if match and not stripped.startswith(("def ", "return ")):
            helps[match.group(1)] = match.group(2) or " ".join(pending)
        pending = []
    return helps


_CHOICES = {
    "input_format": INPUT_FORMATS,
    "pooling": POOLINGS,
    "classifier": CLASSIFIERS,
    "hidden_activation": ("linear", "relu"),
}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none (model flags default to the preset's value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, [], False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser: data and output flags, TrainConfig flags, one flag per ModelConfig field."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.train",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Learning-rate schedules: --schedule cosine (default) warms Adam up linearly from 0 to "
            "--learning_rate over the first --warmup_fraction of the run's steps, then decays it along a "
            "cosine to 0 at the run's last step, so any run length anneals fully. --schedule paper is the "
            f"paper's recipe: Adam at --learning_rate (default {PAPER_LEARNING_RATE:g} with this schedule), "
            "multiplied by --lr_decay_rate (staircase) every --lr_decay_examples examples; by default every "
            f"{PAPER_DECAY_EXAMPLES:,} examples as in the paper, or every (total training examples / "
            f"{MIN_DECAYS_PER_RUN}) when the run is shorter than {MIN_DECAYS_PER_RUN} x "
            f"{PAPER_DECAY_EXAMPLES:,} examples. "
            "Defaults that depend on the preset (--epochs, --learning_rate, and the preset's model fields): "
            "see the README's table of training defaults. The classifier's bias starts at each class's "
            "log-odds, counted over up to --prior_records training records."
        ),
        formatter_class=_HelpFormatter,
    )
    defaults = TrainConfig(train_data=("unused",), model_dir="unused")
    data = parser.add_argument_group("data and outputs")
    data.add_argument(
        "--train_data", nargs="+", required=True, metavar="PATTERN", help="training TFRecord glob(s)"
    )
    data.add_argument(
        "--eval_data", nargs="+", default=[], metavar="PATTERN", help="held-out TFRecord glob(s)"
    )
    data.add_argument("--model_dir", required=True, help="output folder; re-running with it resumes training")
    data.add_argument("--pca_eigenvals", help="yt8m_pca/eigenvals.npy: reverse-whiten rgb (paper §3.3)")
    data.add_argument("--label_names", help="label_id,label_name CSV, copied next to the model")
    data.add_argument("--export_saved_model", action="store_true", help="also write model_dir/saved_model")
    data.add_argument(
        "--init_model",
        help="start from this trained model_dir's weights; the model is its config.json (preset and model "
        "flags must agree with it)",
    )
    data.add_argument(
        "--segment_labels",
        action="store_true",
        help="train on the rated 5-frame segments of --train_data (the 2019 segment release) instead of "
        "whole videos: rated classes' present/absent are the targets, unrated classes are left out of the "
        "loss; with --init_model, fine-tunes a video-level model. --eval_data then reports segment mAP",
    )

    run = parser.add_argument_group("training")
    run.add_argument(
        "--preset",
        default="paper",
        help=f"model preset ({', '.join(ModelConfig.preset_names())}); flags below override its fields",
    )
    run.add_argument(
        "--schedule", choices=SCHEDULES, default=defaults.schedule, help="learning-rate schedule (see below)"
    )
    for name in (
        "batch_size",
        "epochs",
        "max_steps",
        "steps_per_epoch",
        "learning_rate",
        "warmup_fraction",
        "lr_decay_rate",
        "lr_decay_examples",
        "clipnorm",
        "label_smoothing",
        "seed",
        "checkpoint_steps",
        "keep_checkpoints",
        "eval_batch_size",
        "shuffle_buffer",
        "check_records",
        "prior_records",
        "frame_bucket",
    ):
        # Preset-dependent fields default to None here and are resolved in `resolve_configs`.
        default = None if name in _PRESET_DEPENDENT else getattr(defaults, name)
        floats = ("learning_rate", "warmup_fraction", "lr_decay_rate", "clipnorm", "label_smoothing")
        kind = float if name in floats else int
        run.add_argument(
            f"--{name}", type=kind, default=default, help=_TRAIN_HELP.get(name, name.replace("_", " "))
        )
    run.add_argument(
        "--mixed_precision", action="store_true", help="mixed_float16 on GPU, mixed_bfloat16 on CPU"
    )
    run.add_argument(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="none",
        help="tf.distribute strategy (KERAS_BACKEND=tensorflow): mirrored = all GPUs of this host, "
        "multi_worker = the hosts in TF_CONFIG (e.g. a Vertex AI training job)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    model = parser.add_argument_group("model (each flag overrides the preset's ModelConfig field)")
    helps = _model_field_help()
    for field in dataclasses.fields(ModelConfig):
        default = getattr(ModelConfig(), field.name)
        kind = _parse_bool if isinstance(default, bool) else type(default)
        model.add_argument(
            f"--{field.name}",
            type=kind,
            choices=_CHOICES.get(field.name),
            default=None,
            help=helps.get(field.name) or field.name.replace("_", " "),
        )
    return parser


_PRESET_DEPENDENT = ("epochs", "learning_rate")
_TRAIN_HELP = {
    "batch_size": "global batch size (the paper: 160)",
    "epochs": f"epochs of --steps_per_epoch steps (default: the preset's, else {TrainConfig.epochs})",
    "max_steps": "stop after this many global steps (overrides --epochs)",
    "steps_per_epoch": "steps per epoch (default: one pass over --train_data)",
    "learning_rate": f"Adam's peak (cosine) or initial (paper) learning rate (default: the preset's, else "
    f"{TrainConfig.learning_rate:g}; {PAPER_LEARNING_RATE:g} with --schedule paper)",
    "warmup_fraction": "cosine schedule: share of the steps spent warming up",
    "lr_decay_rate": "paper schedule: staircase learning-rate decay factor",
    "lr_decay_examples": "paper schedule: examples between decays (default: see below)",
    "clipnorm": "per-variable gradient-norm clipping",
    "label_smoothing": "smooth the 0/1 targets towards 0.5 by this much",
    "seed": "random seed (weights, dropout, shuffling)",
    "checkpoint_steps": "checkpoint every this many steps (and at every epoch end)",
    "keep_checkpoints": "newest checkpoints kept",
    "eval_batch_size": "evaluation batch size (default: --batch_size)",
    "shuffle_buffer": "records in the shuffle buffer",
    "check_records": "records of each data pattern validated before training",
    "prior_records": "training records counted for the classifier's initial bias (0: 3 labels / classes)",
    "frame_bucket": "pad frame axes to a multiple of this (default: 32 on JAX or GPU, else no padding)",
}


def resolve_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The `ModelConfig` (preset + overrides) and `TrainConfig` of parsed arguments.

    Raises:
        ValueError: unknown preset, `--input_format` contradicting the preset, or an invalid value.
    """
    preset = ModelConfig.preset(args.preset)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ModelConfig)
        if getattr(args, f.name) is not None
    }
    if "input_format" in overrides and overrides["input_format"] != preset.input_format:
        raise ValueError(
            f"--input_format {overrides['input_format']} contradicts --preset {args.preset} "
            f"(a {preset.input_format}-level model); for {overrides['input_format']}-level data pick "
            + (
                "--preset video"
                if overrides["input_format"] == "video"
                else "a frame-level preset such as paper or demo"
            )
        )
    model_config = preset.replace(**overrides)
    if getattr(args, "init_model", None):
        model_config = _init_model_config(args.init_model, overrides)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {name: getattr(args, name) for name in train_fields if hasattr(args, name)}
    preset_training = dict(PRESET_TRAINING.get(args.preset, {}))
    if values.get("schedule") == "paper":  # the paper's recipe, unless the learning rate is given
        preset_training["learning_rate"] = PAPER_LEARNING_RATE
    for name in _PRESET_DEPENDENT:
        if values.get(name) is None:
            values.pop(name, None)
            if name in preset_training:
                values[name] = preset_training[name]
    values["verbose"] = not args.quiet
    train_config = TrainConfig(**values)
    return model_config, train_config


def _init_model_config(init_model: str, overrides: dict[str, Any]) -> ModelConfig:
    """The `ModelConfig` of `--init_model` (its config.json); model flags may not contradict it."""
    from nextvlad import files

    folder = init_model.rsplit("/", 1)[0] if init_model.endswith(".keras") else init_model.rstrip("/")
    path = _path(folder, MODEL_CONFIG_FILE)
    try:
        config = ModelConfig.from_json(files.read_text(path))
    except OSError:
        raise FileNotFoundError(
            f"--init_model {init_model}: no {path}; pass the model_dir of a model trained by trainer.train"
        ) from None
    changed = [f"--{name} {value!r} (it has {getattr(config, name)!r})" for name, value in overrides.items()
               if getattr(config, name) != value]  # fmt: skip
    if changed:
        raise ValueError(
            f"--init_model {init_model} fixes the model; drop the model flags contradicting its config.json: "
            + ", ".join(changed)
        )
    return config


def format_summary(result: dict[str, Any], model_config: ModelConfig, preset: str) -> str:
    """A few lines for the terminal at the end of training."""
    seconds = result["train_seconds"]
    lines = [
        f"Trained {model_config.pooling} model (preset {preset}, {result['num_parameters']:,} parameters): "
        f"step {result['global_step']:,}/{result['total_steps']:,} ({result['epochs']:.2f} epochs)"
        + (f", resumed at step {result['initial_step']:,}" if result["initial_step"] else ""),
        f"  this run: {seconds:.1f} s of training, {result['examples_per_second'] or 0:.1f} examples/s "
        f"({result['backend']}, {result['mixed_precision']})",
    ]
    if result.get("segment_map") is not None:
        lines.append(
            f"  eval on {result['num_ratings']:,} segment ratings of {result['num_videos']:,} videos: "
            f"segment mAP@{result['max_predictions']:,} {result['segment_map']:.4f}"
        )
    if result.get("gap") is not None:
        lines.append(
            f"  eval on {result['num_videos']:,} videos: GAP@20 {result['gap']:.4f}  Hit@1 "
            f"{result['hit_at_one']:.4f}  PERR {result['perr']:.4f}  mAP {result['map']:.4f}"
        )
    lines.append(f"  serving model: {result['model']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("trainer", "nextvlad"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        model_config, train_config = resolve_configs(args)
        result = train(model_config, train_config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(result, model_config, "of --init_model" if args.init_model else args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
