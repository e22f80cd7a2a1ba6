"""Keras callbacks of the trainer: global-step bookkeeping, checkpoints, per-epoch evaluation, logs."""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nextvlad import metrics

logger = logging.getLogger(__name__)

HISTORY_FIELDS = (
    "epoch",
    "step",
    "loss",
    "learning_rate",
    "val_gap",
    "val_hit_at_one",
    "val_perr",
    "val_map",
    "epoch_seconds",
)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` (local or gs://) through a temporary file, so readers never see half of it."""
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def append_history(path: str, row: dict[str, Any], *, fields: Sequence[str] = HISTORY_FIELDS) -> None:
    """Appends one row to a CSV (writing the header first when the file is new)."""
    exists = tf.io.gfile.exists(path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    if not exists:
        writer.writeheader()
    writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
    if "://" in path:  # object stores cannot append: rewrite the file
        with tf.io.gfile.GFile(path, "r") as f:
            old = f.read() if exists else ""
        write_text(path, old + buffer.getvalue())
    else:
        with open(path, "a", newline="") as f:
            f.write(buffer.getvalue())


def evaluate_predictions(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """GAP@20, Hit@1, PERR and mAP (the `nextvlad.metrics` definitions) and the number of videos.

    Args:
        predictions: float scores `[N, C]`.
        labels: 0/1 labels `[N, C]`.

    Returns:
        `{"gap", "hit_at_one", "perr", "map", "num_videos"}`.
    """
    return {
        "gap": metrics.gap(predictions, labels, top_k=20),
        "hit_at_one": metrics.hit_at_one(predictions, labels),
        "perr": metrics.perr(predictions, labels),
        "map": metrics.mean_average_precision(predictions, labels),
        "num_videos": int(predictions.shape[0]),
    }


def predict_dataset(serving: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs a serving model over `(features, labels)` batches.

    Args:
        serving: a model whose output dict has `predictions [B, C]`.
        dataset: batches from `nextvlad.yt8m.make_dataset`.

    Returns:
        Scores `[N, C]` float32 and labels `[N, C]` bool of every video, in dataset order.
    """
    scores, labels = [], []
    for features, batch_labels in dataset:
        inputs = {name: value.numpy() for name, value in features.items()}
        scores.append(np.asarray(serving.predict_on_batch(inputs)["predictions"], dtype=np.float32))
        labels.append(batch_labels.numpy() > 0.5)
    return np.concatenate(scores), np.concatenate(labels)


def data_error(e: Exception, flag: str, num_classes: int) -> ValueError:
    """A `tf.data` error raised while training or evaluating, rephrased for the user.

    Args:
        e: the `tf.errors.InvalidArgumentError` from the input pipeline.
        flag: the command-line flag of the data being read.
        num_classes: the model's number of classes.

    Returns:
        A ValueError that says what to do.
    """
    # The input pipeline's own checks (nextvlad.yt8m) say what was wrong and what to pass; TensorFlow
    # puts that text on the line of the failed assertion, after a generic first line.
    lines = getattr(e, "message", str(e)).splitlines() or [""]
    message = next((line.strip() for line in lines if "assertion failed" in line), lines[0])
    return ValueError(
        f"{flag}: a record could not be read as YouTube-8M data for this {num_classes}-class model (the "
        f"records checked before training were fine): {message}"
    )


def _current_learning_rate(optimizer: Any) -> float:
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer under mixed_float16
    return float(keras.ops.convert_to_numpy(inner.learning_rate))


class TrainingMonitor(keras.callbacks.Callback):
    """Counts global steps, writes checkpoints, evaluates after every epoch and appends `history.csv`.

    The evaluation results are added to the epoch's logs (`val_gap`, `val_hit_at_one`, `val_perr`,
    `val_map`), so the progress bar and the callbacks after this one see them.

    Args:
        checkpoints: a `CheckpointManager`.
        step: global step at the start (the restored checkpoint's).
        total_steps: stop when the global step reaches this.
        steps_per_epoch: steps per epoch.
        checkpoint_steps: also checkpoint every this many global steps.
        serving: the serving view of the network, for evaluation.
        eval_dataset: held-out batches, or None for no evaluation.
        history_path: the CSV to append to, or None (non-chief workers).
    """

    def __init__(
        self,
        *,
        checkpoints: Any,
        step: int,
        total_steps: int,
        steps_per_epoch: int,
        checkpoint_steps: int,
        serving: keras.Model,
        eval_dataset: tf.data.Dataset | None,
        history_path: str | None,
    ) -> None:
        super().__init__()
        self.checkpoints = checkpoints
        self.step = step
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.checkpoint_steps = checkpoint_steps
        self.serving = serving
        self.eval_dataset = eval_dataset
        self.history_path = history_path
        self.stop_after_epoch = False  # set for the partial epoch a resumed run finishes first
        self.train_seconds = 0.0  # time in training epochs, without evaluation or checkpoints
        self.steps_run = 0
        self.last_eval: dict[str, Any] | None = None
        self.last_eval_step: int | None = None
        self._last_checkpoint_step: int | None = None
        self._epoch_start = 0.0
        self._overhead = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._overhead = 0.0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.steps_run += 1
        if self.step % self.checkpoint_steps == 0 and self.step % self.steps_per_epoch:
            start = time.perf_counter()
            self._save(epoch=self.step // self.steps_per_epoch)
            self._overhead += time.perf_counter() - start
        if self.step >= self.total_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self._epoch_start
        self.train_seconds += seconds - self._overhead
        model = self.model  # on JAX, reading `model` syncs the variables back from the train state
        logs["learning_rate"] = _current_learning_rate(model.optimizer)
        if self.eval_dataset is not None:
            try:
                predictions = predict_dataset(self.serving, self.eval_dataset)
            except tf.errors.InvalidArgumentError as e:
                raise data_error(
                    e, "--eval_data", int(self.serving.output["predictions"].shape[-1])
                ) from None
            self.last_eval = evaluate_predictions(*predictions)
            self.last_eval_step = self.step
            logs.update({f"val_{k}": v for k, v in self.last_eval.items() if k != "num_videos"})
        self._save(epoch=epoch + 1)
        if not self.params.get("verbose"):  # otherwise the progress bar shows the same numbers
            summary = f"epoch {epoch + 1}, step {self.step}: loss {logs.get('loss', float('nan')):.4f}"
            if self.last_eval is not None and self.last_eval_step == self.step:
                summary += (
                    f"; eval GAP@20 {self.last_eval['gap']:.4f}, Hit@1 {self.last_eval['hit_at_one']:.4f}, "
                    f"PERR {self.last_eval['perr']:.4f}"
                )
            logger.info("%s (%.1f s)", summary, seconds)
        if self.history_path:
            append_history(
                self.history_path,
                {**logs, "epoch": epoch + 1, "step": self.step, "epoch_seconds": round(seconds, 3)},
            )
        if self.stop_after_epoch:
            model.stop_training = True

    def _save(self, *, epoch: int) -> None:
        if self._last_checkpoint_step == self.step:
            return
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.checkpoints.save(self.model, step=self.step, epoch=epoch, iterations=iterations)
        self._last_checkpoint_step = self.step


class ScalarSummaries(keras.callbacks.Callback):
    """Writes every numeric epoch log (loss, learning rate, evaluation metrics) as TensorBoard scalars.

    Uses `tf.summary.write` with the scalar plugin's metadata, which needs only TensorFlow (Keras's
    `TensorBoard` callback needs the `tensorboard` package as well). The x axis is the global step.

    Args:
        log_dir: event-file folder (local or gs://).
        monitor: the `TrainingMonitor` whose global step is used.
    """

    def __init__(self, log_dir: str, monitor: TrainingMonitor) -> None:
        super().__init__()
        from tensorflow.core.framework import summary_pb2

        self.log_dir = log_dir
        self.monitor = monitor
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR,
        )
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for name, value in (logs or {}).items():
                if isinstance(value, int | float | np.floating | np.integer):
                    tag = name if name.startswith("val_") else f"train_{name}"
                    tf.summary.write(
                        tag,
                        tf.constant(float(value), tf.float32),
                        step=self.monitor.step,
                        metadata=self._metadata,
                    )
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
