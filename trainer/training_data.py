"""The inputs of a training run: the `tf.data` pipelines, rated-segment counts and the label names CSV."""

from __future__ import annotations

import logging
from typing import Any

from nextvlad.config import ModelConfig
from trainer.config import TrainConfig

logger = logging.getLogger(__name__)

GPU_FRAME_BUCKET = 32  # the default --frame_bucket on JAX or a GPU


def make_datasets(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_files: list[str],
    eval_files: list[str],
    *,
    initial_step: int,
    backend: str,
) -> tuple[Any, Any]:
    """The training dataset (shuffled, repeated) and the per-epoch evaluation dataset (None without eval
    files, or with `segment_labels`: segment mAP is computed once, after training).

    The shuffle seed moves on with `initial_step`, so a resumed run does not replay the examples it
    already saw.
    """
    from nextvlad import yt8m
    from nextvlad.serving import has_gpu

    cfg, tc = model_config, train_config
    frame_bucket = tc.frame_bucket or (GPU_FRAME_BUCKET if backend == "jax" or has_gpu() else None)
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
            seed=tc.seed + initial_step,
            drop_remainder=True,
        )
    bucket = cfg.input_format == "frame" and frame_bucket and frame_bucket > 1
    if bucket:
        train_dataset = _bucket_frames(train_dataset, frame_bucket, cfg.max_frames)
    eval_dataset = None
    if eval_files and not tc.segment_labels:
        eval_dataset = yt8m.make_dataset(
            eval_files,
            input_format=cfg.input_format,
            batch_size=tc.eval_batch_size or tc.batch_size,
            num_classes=cfg.num_classes,
            max_frames=cfg.max_frames,
        )
        if bucket:
            eval_dataset = _bucket_frames(eval_dataset, frame_bucket, cfg.max_frames)
    return train_dataset, eval_dataset


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


def count_segments(model_config: ModelConfig, train_files: list[str]) -> int:
    """Rated segments of the training records (the examples of --segment_labels), or a clear error."""
    from nextvlad.segments import count_rated_segments

    if model_config.input_format != "frame":
        raise ValueError("--segment_labels trains on frames of rated segments: it needs a frame-level model")
    count = count_rated_segments(train_files)
    if not count:
        raise ValueError(
            "--segment_labels: the --train_data records carry no segment ratings (segment_start_times, "
            "segment_labels, segment_scores); pass segment-rated records (the 2019 validation set, or "
            "`python -m nextvlad.synthetic --segments`)"
        )
    return count


def label_names_csv(path: str, num_classes: int) -> str:
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
