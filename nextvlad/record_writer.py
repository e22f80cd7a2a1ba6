"""Writers of YouTube-8M records, encoding the wire format directly (`nextvlad.protowire`).

`frame_example_bytes` (a `tf.train.SequenceExample`) and `video_example_bytes` (a `tf.train.Example`)
produce the bytes TensorFlow's own serializer produces for the same features; the tests check them
against protos built with TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from nextvlad.protowire import (
    F1,
    F2,
    bytes_feature,
    features_message,
    float_feature,
    int64_feature,
    length_field,
    varint,
)
from nextvlad.records import AUDIO_SIZE, ID_FEATURES, RGB_SIZE, SEGMENT_FIELDS, frame_prefix


def _frame_list_parts(key: str, frames_q: np.ndarray) -> tuple[int, list[Any]]:
    """One FeatureLists map entry for uint8 frames [T, D], as (encoded length, byte chunks).

    Every frame's Feature has the same size, so all framing bytes are identical: write them into a
    [T, prefix + D] uint8 array next to the data in one numpy copy instead of T proto objects.
    """
    num, dim = frames_q.shape
    prefix = frame_prefix(dim)
    rows = np.empty((num, len(prefix) + dim), dtype=np.uint8)  # [T, prefix + D]
    rows[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    rows[:, len(prefix) :] = frames_q
    body_len = rows.size  # FeatureList body
    key_field = length_field(F1, key.encode())
    value_head = F2 + varint(body_len)
    entry_len = len(key_field) + len(value_head) + body_len
    entry_head = F1 + varint(entry_len)
    parts = [entry_head, key_field, value_head, memoryview(rows).cast("B")]
    return len(entry_head) + entry_len, parts


def _check_frames(name: str, frames_q: Any, size: int) -> np.ndarray:
    arr = np.asarray(frames_q)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name} frames must be quantized uint8, got {arr.dtype}; use quantize() on float features"
        )
    if arr.ndim != 2 or arr.shape[1] != size:
        raise ValueError(f"{name} frames must have shape [T, {size}], got {arr.shape}")
    return np.ascontiguousarray(arr)


def _check_labels(labels: Iterable[int]) -> list[int]:
    out = [int(v) for v in labels]
    if any(v < 0 for v in out):
        raise ValueError(f"label ids must be >= 0, got {out}")
    return out


def _check_id_feature(id_feature: str) -> None:
    if id_feature not in ID_FEATURES:
        raise ValueError(f"id_feature={id_feature!r}; expected one of {ID_FEATURES}")


def frame_example_bytes(
    video_id: str,
    labels: Iterable[int],
    rgb_q: np.ndarray,
    audio_q: np.ndarray,
    *,
    segments: Mapping[str, Sequence[float]] | None = None,
    id_feature: str = "id",
) -> bytes:
    """Serialize one frame-level record (`tf.train.SequenceExample`) without building proto objects.

    Args:
        video_id: the video's id (stored as UTF-8 bytes).
        labels: class ids (may be empty).
        rgb_q: uint8 [T, 1024] quantized rgb frames, T >= 1.
        audio_q: uint8 [T, 128] quantized audio frames.
        segments: optional 2019-style segment annotations, a mapping with keys `segment_start_times`
            (ints), `segment_labels` (ints) and `segment_scores` (floats), all the same length.
        id_feature: `"id"` (2018 layout) or `"video_id"` (2017 layout).

    Returns:
        The serialized SequenceExample; `tf.train.SequenceExample.FromString` gives the same message as
        building it with protos.
    """
    _check_id_feature(id_feature)
    rgb_q = _check_frames("rgb", rgb_q, RGB_SIZE)
    audio_q = _check_frames("audio", audio_q, AUDIO_SIZE)
    if rgb_q.shape[0] != audio_q.shape[0]:
        raise ValueError(f"rgb has {rgb_q.shape[0]} frames but audio has {audio_q.shape[0]}; they must match")
    if rgb_q.shape[0] == 0:
        raise ValueError(f"video {video_id!r} has no frames; every record needs at least one")
    context_entries = [
        (id_feature, bytes_feature([video_id.encode()])),
        ("labels", int64_feature(_check_labels(labels))),
    ]
    if segments is not None:
        context_entries += _segment_entries(segments)
    context = features_message(context_entries)

    rgb_len, rgb_parts = _frame_list_parts("rgb", rgb_q)
    audio_len, audio_parts = _frame_list_parts("audio", audio_q)
    return b"".join([length_field(F1, context), F2, varint(rgb_len + audio_len), *rgb_parts, *audio_parts])


def _segment_entries(segments: Mapping[str, Sequence[float]]) -> list[tuple[str, bytes]]:
    unknown = set(segments) - set(SEGMENT_FIELDS)
    if unknown:
        raise ValueError(f"Unknown segment fields {sorted(unknown)}; expected {sorted(SEGMENT_FIELDS)}")
    lengths = {k: len(v) for k, v in segments.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"segment fields must have equal lengths, got {lengths}")
    entries = []
    for name in SEGMENT_FIELDS:
        if name in segments:
            encode = float_feature if name == "segment_scores" else int64_feature
            entries.append((name, encode(segments[name])))
    return entries


def video_example_bytes(
    video_id: str, labels: Iterable[int], mean_rgb: Any, mean_audio: Any, *, id_feature: str = "id"
) -> bytes:
    """Serialize one video-level record (`tf.train.Example`).

    Args:
        video_id: the video's id.
        labels: class ids (may be empty).
        mean_rgb: [1024] floats (mean of the dequantized rgb frames in the dataset).
        mean_audio: [128] floats.
        id_feature: `"id"` (2018 layout) or `"video_id"` (2017 layout).

    Returns:
        The serialized Example.
    """
    _check_id_feature(id_feature)
    mean_rgb = np.asarray(mean_rgb, dtype=np.float32)
    mean_audio = np.asarray(mean_audio, dtype=np.float32)
    if mean_rgb.shape != (RGB_SIZE,) or mean_audio.shape != (AUDIO_SIZE,):
        raise ValueError(
            f"mean_rgb must be [{RGB_SIZE}] and mean_audio [{AUDIO_SIZE}], "
            f"got {mean_rgb.shape} and {mean_audio.shape}"
        )
    features = features_message(
        [
            (id_feature, bytes_feature([video_id.encode()])),
            ("labels", int64_feature(_check_labels(labels))),
            ("mean_rgb", float_feature(mean_rgb)),
            ("mean_audio", float_feature(mean_audio)),
        ]
    )
    return length_field(F1, features)
