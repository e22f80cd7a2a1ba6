"""YouTube-8M records for training and evaluation: file patterns and a `tf.data` input pipeline.

The record format itself (parsing, validation, writing, label names, dequantization constants, files)
lives in `nextvlad.records`, `nextvlad.record_writer` and `nextvlad.files`, which need no TensorFlow; their
public names are re-exported here. This module adds what needs TensorFlow: `make_dataset`, which parses
whole batches with `tf.io` ops and pads each batch to its own longest video.

Frames stay uint8 all the way to the model, which dequantizes them itself (see `nextvlad.layers`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from nextvlad.files import count_records, peek_records
from nextvlad.files import expand_pattern as expand_file_pattern
from nextvlad.record_writer import frame_example_bytes, video_example_bytes
from nextvlad.records import (
    AUDIO_SIZE,
    ID_FEATURES,
    INPUT_FORMATS,
    INVALID_REASONS,
    MAX_FRAMES,
    NUM_CLASSES,
    RGB_SIZE,
    SEGMENT_FRAMES,
    InvalidRecordError,
    dequantize,
    id_feature,
    parse_frame_example,
    parse_label_names,
    parse_video_example,
    quantize,
    read_label_names,
    reverse_whiten,
    reverse_whitening_scale,
    write_tfrecords,
)

__all__ = [
    "AUDIO_SIZE",
    "ID_FEATURES",
    "INPUT_FORMATS",
    "INVALID_REASONS",
    "MAX_FRAMES",
    "NUM_CLASSES",
    "RGB_SIZE",
    "InvalidRecordError",
    "count_records",
    "dequantize",
    "expand_file_pattern",
    "frame_example_bytes",
    "id_feature",
    "make_dataset",
    "make_segment_dataset",
    "parse_frame_example",
    "parse_label_names",
    "parse_video_example",
    "peek_records",
    "quantize",
    "read_label_names",
    "reverse_whiten",
    "reverse_whitening_scale",
    "video_example_bytes",
    "write_tfrecords",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# tf.data input pipeline
# --------------------------------------------------------------------------------------------------


def _after(checks: Sequence[Any], x: tf.Tensor) -> tf.Tensor:
    """`x`, but only once `checks` passed: ops that would fail on bad data with an obscure error
    (reshape, scatter) must not run before the assertion that explains the problem."""
    with tf.control_dependencies(checks):
        return tf.identity(x)


def _labels_multi_hot(labels: tf.RaggedTensor, num_classes: int) -> tf.Tensor:  # [B, C] float32
    ids = labels.flat_values  # [L] int64
    checks = [
        tf.debugging.assert_non_negative(ids, message="YouTube-8M label ids must be >= 0"),
        tf.debugging.assert_less(
            ids,
            tf.constant(num_classes, tf.int64),
            message=f"Label id >= num_classes={num_classes}: the data uses a larger vocabulary than "
            "num_classes; pass --num_classes with the size of this data's label vocabulary",
        ),
    ]
    ids = _after(checks, ids)
    index = tf.stack([tf.cast(labels.value_rowids(), tf.int64), ids], axis=1)  # [L, 2]
    zeros = tf.zeros(
        tf.stack([tf.cast(labels.nrows(), tf.int64), tf.constant(num_classes, tf.int64)]), tf.float32
    )
    return tf.tensor_scatter_nd_max(zeros, index, tf.ones_like(ids, tf.float32))


def _frames_to_padded(
    frames: tf.RaggedTensor, size: int, name: str, max_frames: int, checks: Sequence[Any]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Ragged [B, (T), (V)] frame strings -> uint8 [B, T_max, size] padded with 0, and [B] int32 lengths."""
    one_value = tf.debugging.assert_equal(
        frames.values.row_lengths(),
        tf.constant(1, frames.values.row_splits.dtype),
        message=f"Every {name} frame must hold exactly one bytes value",
    )
    # With one value per frame the inner ragged dimension is trivial: drop it.
    frames = tf.RaggedTensor.from_row_splits(
        _after([*checks, one_value], frames.flat_values), frames.row_splits, validate=False
    )  # [B, (T)]
    frames = frames[:, :max_frames]
    flat = frames.flat_values  # [N] strings
    right_size = tf.debugging.assert_equal(
        tf.strings.length(flat),
        size,
        message=f"Every {name} frame must hold exactly {size} bytes (uint8-quantized YouTube-8M features)",
    )
    values = tf.reshape(tf.io.decode_raw(_after([right_size], flat), tf.uint8), [-1, size])  # [N, size]
    dense = frames.with_flat_values(values).to_tensor(tf.constant(0, tf.uint8))  # [B, T_max, size]
    return dense, tf.cast(frames.row_lengths(), tf.int32)


_ID_SPECS = {name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in ID_FEATURES}


def _video_ids(context: dict[str, tf.Tensor]) -> tf.Tensor:
    """[B] ids from `id`, or from the 2017 release's `video_id`; a record with neither stops iteration."""
    ids = tf.where(tf.strings.length(context["id"]) > 0, context["id"], context["video_id"])
    check = tf.debugging.assert_greater(
        tf.strings.length(ids), 0, message="A record has neither an 'id' nor a 'video_id' feature"
    )
    return _after([check], ids)


def _parse_frame_batch(
    serialized: tf.Tensor, num_classes: int, max_frames: int, include_ids: bool
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    context, sequences, _ = tf.io.parse_sequence_example(
        serialized,
        context_features={**_ID_SPECS, "labels": tf.io.RaggedFeature(tf.int64)},
        sequence_features={
            "rgb": tf.io.RaggedFeature(tf.string),
            "audio": tf.io.RaggedFeature(tf.string),
        },
    )
    rgb_len = sequences["rgb"].row_lengths()
    checks = [
        tf.debugging.assert_positive(
            rgb_len,
            message="A record has no rgb frames: frame-level data needs rgb and audio feature lists "
            "(for video-level data with mean_rgb/mean_audio use input_format=video)",
        ),
        tf.debugging.assert_equal(
            rgb_len,
            sequences["audio"].row_lengths(),
            message="rgb and audio must have the same number of frames in every record",
        ),
    ]
    rgb, num_frames = _frames_to_padded(sequences["rgb"], RGB_SIZE, "rgb", max_frames, checks)
    audio, _ = _frames_to_padded(sequences["audio"], AUDIO_SIZE, "audio", max_frames, checks)
    features = {"rgb": rgb, "audio": audio, "num_frames": num_frames}
    if include_ids:
        features["id"] = _video_ids(context)
    return features, _labels_multi_hot(context["labels"], num_classes)


def _dense_floats(ragged: tf.RaggedTensor, size: int, name: str) -> tf.Tensor:  # [B, size]
    right_size = tf.debugging.assert_equal(
        ragged.row_lengths(),
        tf.constant(size, ragged.row_splits.dtype),
        message=f"Every record needs {name} with exactly {size} floats (a record without it is probably "
        "frame-level: use input_format=frame)",
    )
    return tf.reshape(_after([right_size], ragged.flat_values), [-1, size])


def _parse_video_batch(
    serialized: tf.Tensor, num_classes: int, include_ids: bool
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    parsed = tf.io.parse_example(
        serialized,
        {
            **_ID_SPECS,
            "labels": tf.io.RaggedFeature(tf.int64),
            "mean_rgb": tf.io.RaggedFeature(tf.float32),
            "mean_audio": tf.io.RaggedFeature(tf.float32),
        },
    )
    features = {
        "mean_rgb": _dense_floats(parsed["mean_rgb"], RGB_SIZE, "mean_rgb"),
        "mean_audio": _dense_floats(parsed["mean_audio"], AUDIO_SIZE, "mean_audio"),
    }
    if include_ids:
        features["id"] = _video_ids(parsed)
    return features, _labels_multi_hot(parsed["labels"], num_classes)


def _serialized_records(
    files: list[str], *, cycle: int, shuffle: bool, shuffle_buffer: int, repeat: bool, seed: int | None
) -> tf.data.Dataset:
    """The files' serialized records, `cycle` files read at a time; shuffled (files, then a buffer of
    records) and repeated on request, in a deterministic order when a seed is given or nothing shuffles."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=seed is not None or not shuffle,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds


def make_dataset(
    file_pattern: str | Sequence[str],
    *,
    input_format: str = "frame",
    batch_size: int,
    num_classes: int = NUM_CLASSES,
    max_frames: int = MAX_FRAMES,
    shuffle: bool = False,
    shuffle_buffer: int = 4096,
    repeat: bool = False,
    seed: int | None = None,
    include_ids: bool = False,
    drop_remainder: bool = False,
    num_parallel_reads: int | None = None,
) -> tf.data.Dataset:
    """Batched `(features, labels)` from YouTube-8M TFRecords, for training and evaluation.

    Records are batched while still serialized and parsed a whole batch at a time; frame-level batches
    are padded with zeros to the longest video in the batch (not to `max_frames`).

    Args:
        file_pattern: glob pattern(s), local or gs://.
        input_format: "frame" (SequenceExample with rgb/audio frames) or "video" (Example with
            mean_rgb/mean_audio).
        batch_size: videos per batch.
        num_classes: label vocabulary size; a label id outside [0, num_classes) stops iteration with an
            `InvalidArgumentError` naming num_classes.
        max_frames: frames kept per video (the rest are dropped).
        shuffle: shuffle file order and records (buffer of `shuffle_buffer` serialized records; for frame
            level that is ~170 KB each).
        shuffle_buffer: records in the shuffle buffer.
        repeat: repeat forever (each pass reshuffles when `shuffle`).
        seed: seed for the shuffles; with a seed the element order is deterministic.
        include_ids: also return `features["id"]` [B] string.
        drop_remainder: drop the last partial batch (static batch dimension).
        num_parallel_reads: files read concurrently (default: min(#files, 16)).

    Returns:
        A dataset of `(features, labels)`. Frame level: features `rgb` uint8 [B, T, 1024], `audio`
        uint8 [B, T, 128] (quantized, as stored; zero-padded), `num_frames` int32 [B]; video level:
        `mean_rgb` float32 [B, 1024], `mean_audio` float32 [B, 128].
        labels: multi-hot float32 [B, num_classes].
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if batch_size < 1 or max_frames < 1 or num_classes < 1:
        raise ValueError(
            "batch_size, max_frames and num_classes must be >= 1, "
            f"got {batch_size}, {max_frames}, {num_classes}"
        )
    files = expand_file_pattern(file_pattern)
    deterministic = seed is not None or not shuffle
    cycle = num_parallel_reads or min(len(files), 16)
    logger.info("reading %d %s-level files (%d in parallel)", len(files), input_format, cycle)
    ds = _serialized_records(
        files, cycle=cycle, shuffle=shuffle, shuffle_buffer=shuffle_buffer, repeat=repeat, seed=seed
    )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if input_format == "frame":
        parse = functools.partial(
            _parse_frame_batch,
            num_classes=num_classes,
            max_frames=max_frames,
            include_ids=include_ids,
        )
    else:
        parse = functools.partial(_parse_video_batch, num_classes=num_classes, include_ids=include_ids)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------------
# Rated segments (the 2019 segment release), for fine-tuning on segment labels
# --------------------------------------------------------------------------------------------------


def _frames_at(strings: tf.Tensor, index: tf.Tensor, valid: tf.Tensor, size: int, name: str) -> tf.Tensor:
    """uint8 [U, L, size] frames `strings[index]`, zeros where not `valid` (past the video's end)."""
    picked = tf.gather(strings, index)  # [U, L] strings
    right_size = tf.debugging.assert_equal(
        tf.strings.length(picked),
        size,
        message=f"Every {name} frame must hold exactly {size} bytes (uint8-quantized YouTube-8M features)",
    )
    frames = tf.reshape(
        tf.io.decode_raw(_after([right_size], picked), tf.uint8), [-1, tf.shape(index)[1], size]
    )
    return frames * tf.cast(valid, tf.uint8)[:, :, None]


def _parse_rated_segments(
    serialized: tf.Tensor, num_classes: int, length: int
) -> tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
    """One record -> its U rated segments: frames `[U, L, D]`, targets `[U, C]` and rated mask `[U, C]`."""
    context, sequences = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            "segment_start_times": tf.io.VarLenFeature(tf.int64),
            "segment_labels": tf.io.VarLenFeature(tf.int64),
            "segment_scores": tf.io.VarLenFeature(tf.float32),
        },
        sequence_features={
            "rgb": tf.io.FixedLenSequenceFeature([], tf.string),
            "audio": tf.io.FixedLenSequenceFeature([], tf.string),
        },
    )
    starts = context["segment_start_times"].values  # [R]
    labels = context["segment_labels"].values  # [R]
    scores = context["segment_scores"].values  # [R]
    total = tf.cast(tf.shape(sequences["rgb"])[0], tf.int64)
    checks = [
        tf.debugging.assert_equal(
            tf.shape(starts), tf.shape(labels), message="segment fields differ in length"
        ),
        tf.debugging.assert_equal(
            tf.shape(starts), tf.shape(scores), message="segment fields differ in length"
        ),
        tf.debugging.assert_non_negative(labels, message="segment label ids must be >= 0"),
        tf.debugging.assert_less(
            labels,
            tf.constant(num_classes, tf.int64),
            message=f"Segment label id >= num_classes={num_classes}: pass the right num_classes",
        ),
        tf.debugging.assert_non_negative(starts, message="segment start times must be >= 0"),
        tf.debugging.assert_less(
            starts, tf.maximum(total, 1), message="a segment starts after the video's end"
        ),
    ]
    unique, which = tf.unique(_after(checks, starts))  # [U], [R]
    index = unique[:, None] + tf.range(length, dtype=tf.int64)  # [U, L]
    valid = index < total
    index = tf.minimum(index, total - 1)
    features = {
        "rgb": _frames_at(sequences["rgb"], index, valid, RGB_SIZE, "rgb"),
        "audio": _frames_at(sequences["audio"], index, valid, AUDIO_SIZE, "audio"),
        "num_frames": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
    }
    pairs = tf.stack([tf.cast(which, tf.int64), labels], axis=1)  # [R, 2]
    shape = tf.stack([tf.cast(tf.size(unique), tf.int64), tf.constant(num_classes, tf.int64)])
    targets = tf.tensor_scatter_nd_max(tf.zeros(shape, tf.float32), pairs, tf.cast(scores > 0, tf.float32))
    rated = tf.tensor_scatter_nd_max(tf.zeros(shape, tf.float32), pairs, tf.ones_like(scores))
    return features, targets, rated


def make_segment_dataset(
    file_pattern: str | Sequence[str],
    *,
    batch_size: int,
    num_classes: int = NUM_CLASSES,
    length: int = SEGMENT_FRAMES,
    shuffle: bool = False,
    shuffle_buffer: int = 4096,
    repeat: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batched rated segments of 2019-style records: `(features, targets, rated)` for fine-tuning.

    Every (video, start time) with at least one rating is one example: its `length` frames from the start
    (zero-padded past the video's end, `num_frames` the true count), `targets[c]` 1 where class `c` is
    rated present, and `rated[c]` 1 where class `c` is rated at all. Passed to Keras as sample weights,
    `rated` masks the unrated classes out of the loss (`trainer.losses`). Records without ratings give
    no examples.

    Args:
        file_pattern: glob pattern(s) of frame-level records, local or gs://.
        batch_size: segments per batch.
        num_classes: label vocabulary size; a rated class outside it stops iteration with an error.
        length: frames per segment (the release rates 5).
        shuffle: shuffle files, records (a buffer of `shuffle_buffer`) and segments.
        shuffle_buffer: records in the record shuffle buffer (segments: the same count).
        repeat: repeat forever.
        seed: seed for the shuffles.
        drop_remainder: drop the last partial batch.

    Returns:
        A dataset of `(features, targets, rated)`: features `rgb` uint8 [B, L, 1024], `audio` uint8
        [B, L, 128], `num_frames` int32 [B]; targets and rated float32 [B, C].
    """
    if batch_size < 1 or length < 1 or num_classes < 1:
        raise ValueError(
            f"batch_size, length and num_classes must be >= 1, got {batch_size}, {length}, {num_classes}"
        )
    files = expand_file_pattern(file_pattern)
    deterministic = seed is not None or not shuffle
    ds = _serialized_records(
        files,
        cycle=min(len(files), 16),
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        repeat=repeat,
        seed=seed,
    )
    parse = functools.partial(_parse_rated_segments, num_classes=num_classes, length=length)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic).unbatch()
    if shuffle:
        # A video's segments arrive together: mix them with other videos' before batching.
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
