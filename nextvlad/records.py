"""The YouTube-8M record format without TensorFlow: parse and validate records.

Frame level: `tf.train.SequenceExample` with context `id` (bytes; `video_id` in the 2017 release),
`labels` (int64 list) and optional `segment_start_times` / `segment_labels` / `segment_scores` (the 2019
segment-rated release); feature lists `rgb` (one 1024-byte value per frame) and `audio` (one 128-byte value
per frame), uint8-quantized. Video level: `tf.train.Example` with `id`, `labels`, `mean_rgb` (1024 floats)
and `mean_audio` (128 floats). docs/design.md ("Record format") has the contract.

The parsers read the protobuf wire format directly (`nextvlad.protowire`; no message objects, no
re-encoding): a frame list whose frames are canonically encoded, which is what every writer produces,
becomes one uint8 array view `[T, D]` of the record's bytes after one vectorised check of every frame's
framing bytes. Anything else takes a field-by-field path that gives the same answer or the same precise
error. Everything here is numpy and the standard library, so the scoring path runs on any Keras backend
without TensorFlow.

The rest of the format lives beside it and is re-exported here for convenience: quantization and
reverse whitening (`nextvlad.quantization`), TFRecord files (`nextvlad.files`) and label names
(`nextvlad.label_names`). Writers are in `nextvlad.record_writer`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from nextvlad.files import iter_tfrecords, masked_crc32c, read_bytes, read_text, write_bytes, write_tfrecords
from nextvlad.label_names import parse_label_names, read_label_names
from nextvlad.protowire import (
    F1,
    LENGTH,
    Feature,
    MalformedError,
    fields,
    messages,
    read_feature,
    string_map,
    varint,
)
from nextvlad.quantization import (
    DEQUANTIZE_BIAS,
    DEQUANTIZE_SCALE,
    MAX_QUANTIZED,
    MIN_QUANTIZED,
    RGB_MEAN_OFFSET,
    RGB_SIZE,
    dequantize,
    quantize,
    reverse_whiten,
    reverse_whitening_scale,
)

__all__ = [
    "AUDIO_SIZE",
    "DEQUANTIZE_BIAS",
    "DEQUANTIZE_SCALE",
    "ID_FEATURES",
    "INPUT_FORMATS",
    "INVALID_REASONS",
    "MAX_FRAMES",
    "MAX_QUANTIZED",
    "MIN_QUANTIZED",
    "NUM_CLASSES",
    "RGB_MEAN_OFFSET",
    "RGB_SIZE",
    "SEGMENT_FIELDS",
    "SEGMENT_FRAMES",
    "InvalidRecordError",
    "dequantize",
    "frame_prefix",
    "id_feature",
    "iter_tfrecords",
    "masked_crc32c",
    "parse_frame_example",
    "parse_label_names",
    "parse_video_example",
    "quantize",
    "read_bytes",
    "read_label_names",
    "read_text",
    "reverse_whiten",
    "reverse_whitening_scale",
    "write_bytes",
    "write_tfrecords",
]

logger = logging.getLogger(__name__)

AUDIO_SIZE = 128  # bytes per quantized audio frame (VGGish features); RGB_SIZE (1024): nextvlad.quantization
MAX_FRAMES = 300  # frames kept per video; YouTube-8M samples one frame per second
NUM_CLASSES = 3862  # 2018 vocabulary
SEGMENT_FRAMES = 5  # a rated segment of the 2019 release covers 5 frames from its start time
ID_FEATURES = ("id", "video_id")  # the video id's feature name: 2018/2019 releases, 2017 release
SEGMENT_FIELDS = ("segment_start_times", "segment_labels", "segment_scores")
INPUT_FORMATS = ("frame", "video")

# Every `InvalidRecordError.reason` the parsers can produce, so dead-letter counters can be declared up front.
INVALID_REASONS = (
    "not_an_example",
    "wrong_record_kind",
    "missing_id",
    "bad_id",
    "missing_rgb",
    "missing_audio",
    "missing_mean_rgb",
    "missing_mean_audio",
    "bad_feature_type",
    "bad_frame_length",
    "bad_feature_length",
    "non_finite_values",
    "frame_count_mismatch",
    "no_frames",
    "label_out_of_range",
    "bad_segments",
)


class InvalidRecordError(ValueError):
    """A record that is not a valid YouTube-8M record of the expected kind.

    Attributes:
        reason: short slug from `INVALID_REASONS` (e.g. `"bad_frame_length"`), for counting dead letters.
        video_id: the record's id when it could be read, else None.
    """

    def __init__(self, message: str, *, reason: str, video_id: str | None = None) -> None:
        self.reason = reason
        self.video_id = video_id
        self.message = message
        where = f" (video id {video_id!r})" if video_id is not None else ""
        super().__init__(f"{message}{where} [reason: {reason}]")

    def __reduce__(self):
        # Keyword-only init args would break the default exception pickling that Beam relies on.
        return (
            functools.partial(InvalidRecordError, reason=self.reason, video_id=self.video_id),
            (self.message,),
        )


class _Message:
    """The top level of one record: its context/features map and, for SequenceExamples, its frame lists."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        try:
            top = list(fields(data, 0, len(data)))
            self.features = string_map(data, [(a, b) for n, w, a, b in top if n == 1 and w == LENGTH])
            self.lists = string_map(data, [(a, b) for n, w, a, b in top if n == 2 and w == LENGTH])
        except MalformedError as e:
            raise InvalidRecordError(
                f"Record of {len(data)} bytes is not a serialized tf.train.Example or SequenceExample ({e}); "
                "is this a TFRecord file of YouTube-8M records?",
                reason="not_an_example",
            ) from None

    def feature(self, name: str) -> Feature | None:
        if name not in self.features:
            return None
        try:
            return read_feature(self.data, *self.features[name])
        except MalformedError as e:
            raise InvalidRecordError(
                f"Feature {name!r} is not a valid protobuf Feature ({e})", reason="not_an_example"
            ) from None


def id_feature(serialized: bytes) -> str | None:
    """Which id feature a record uses: `"id"` (2018 and later releases), `"video_id"` (2017) or None."""
    try:
        message = _Message(bytes(serialized))
    except InvalidRecordError:
        return None
    return next((name for name in ID_FEATURES if name in message.features), None)


def _read_id(message: _Message) -> str:
    name = next((n for n in ID_FEATURES if n in message.features), None)
    if name is None:
        raise InvalidRecordError("Record has no 'id' (or 2017 'video_id') feature", reason="missing_id")
    feat = message.feature(name)
    if feat.kind != "bytes_list" or len(feat.values) != 1:
        raise InvalidRecordError(
            f"'{name}' must hold exactly one bytes value, found {feat.describe()}", reason="bad_feature_type"
        )
    raw = feat.values[0]
    if not raw:
        raise InvalidRecordError(f"'{name}' is empty", reason="bad_id")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecordError(f"'{name}' is not UTF-8 text: {raw[:40]!r}", reason="bad_id") from None


def _try_id(message: _Message) -> str | None:
    try:
        return _read_id(message)
    except InvalidRecordError:
        return None


def _int_list(message: _Message, name: str, video_id: str) -> list[int]:
    feat = message.feature(name)
    if feat is None or feat.kind is None:
        return []
    if feat.kind != "int64_list":
        raise InvalidRecordError(
            f"'{name}' must be an int64 list, found {feat.describe()}",
            reason="bad_feature_type",
            video_id=video_id,
        )
    return feat.values


def _read_labels(message: _Message, num_classes: int | None, video_id: str) -> list[int]:
    labels = _int_list(message, "labels", video_id)  # absent: unlabeled (e.g. the test split)
    if num_classes is None:
        return labels
    bad = [v for v in labels if v < 0 or v >= num_classes]
    if bad:
        raise InvalidRecordError(
            f"label ids {bad} are outside [0, {num_classes}); pass the right num_classes for this vocabulary",
            reason="label_out_of_range",
            video_id=video_id,
        )
    return labels


def _read_segments(message: _Message, video_id: str, total_frames: int) -> dict[str, Any]:
    """The 2019 segment annotations, checked: equal lengths, start times inside the video."""
    present = [name for name in SEGMENT_FIELDS if name in message.features]
    if not present:
        return {}
    out: dict[str, Any] = {
        "segment_start_times": _int_list(message, "segment_start_times", video_id),
        "segment_labels": _int_list(message, "segment_labels", video_id),
    }
    scores = message.feature("segment_scores")
    if scores is None or scores.kind is None:
        out["segment_scores"] = []
    elif scores.kind != "float_list":
        raise InvalidRecordError(
            f"'segment_scores' must be a float list, found {scores.describe()}",
            reason="bad_feature_type",
            video_id=video_id,
        )
    else:
        out["segment_scores"] = [float(v) for v in scores.values]
    lengths = {name: len(values) for name, values in out.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidRecordError(
            f"segment fields must have one value per rated segment, found lengths {lengths}",
            reason="bad_segments",
            video_id=video_id,
        )
    outside = [t for t in out["segment_start_times"] if t < 0 or t >= total_frames]
    if outside:
        raise InvalidRecordError(
            f"segment start times {outside[:5]} lie outside the video's {total_frames} frames",
            reason="bad_segments",
            video_id=video_id,
        )
    return out


@functools.cache
def frame_prefix(size: int) -> bytes:
    """Wire bytes in front of each frame in a canonically encoded FeatureList of `size`-byte frames."""
    bytes_list_len = 1 + len(varint(size)) + size  # BytesList { value: <size bytes> }
    feature_len = 1 + len(varint(bytes_list_len)) + bytes_list_len  # Feature { bytes_list }
    return F1 + varint(feature_len) + F1 + varint(bytes_list_len) + F1 + varint(size)


def _scan_frames(message: _Message, name: str, size: int, video_id: str) -> tuple[int, np.ndarray | None]:
    """`(number of frames, uint8 [T, size] of all frames or None)` of a frame list.

    When every frame is canonically encoded (one bytes value of `size` bytes) the list has a fixed layout:
    one vectorised check of every frame's framing bytes proves it, and the frames are a view of the record's
    bytes. Otherwise only the frames are counted here and `_decode_frames` validates them one by one.
    """
    data = message.data
    start, stop = message.lists[name]
    prefix = frame_prefix(size)
    stride = len(prefix) + size
    if (stop - start) % stride == 0:
        rows = np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start).reshape(-1, stride)
        # One comparison of bytes objects: a quarter of the time of numpy's array_equal on [T, 8].
        if rows[:, : len(prefix)].tobytes() == prefix * rows.shape[0]:
            return rows.shape[0], rows[:, len(prefix) :]
    try:
        return len(messages(data, start, stop, 1)), None
    except MalformedError as e:
        raise InvalidRecordError(
            f"{name} is not a valid protobuf FeatureList ({e})", reason="not_an_example", video_id=video_id
        ) from None


def _decode_frames(message: _Message, name: str, size: int, num_kept: int, video_id: str) -> np.ndarray:
    """The first `num_kept` frames of a list that is not canonically encoded, validated one by one."""
    data = message.data
    values = []
    for i, (a, b) in enumerate(messages(data, *message.lists[name], 1)[:num_kept]):
        try:
            feat = read_feature(data, a, b)
        except MalformedError as e:
            raise InvalidRecordError(
                f"{name} frame {i} is not a valid protobuf Feature ({e})",
                reason="not_an_example",
                video_id=video_id,
            ) from None
        if feat.kind != "bytes_list":
            raise InvalidRecordError(
                f"{name} frame {i} must be a bytes value, found {feat.describe()}",
                reason="bad_feature_type",
                video_id=video_id,
            )
        if len(feat.values) != 1 or len(feat.values[0]) != size:
            raise InvalidRecordError(
                f"{name} frame {i} holds byte strings of lengths {[len(v) for v in feat.values]}; "
                f"expected one value of {size} bytes",
                reason="bad_frame_length",
                video_id=video_id,
            )
        values.append(feat.values[0])
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), size)


def _reject_other_kind(message: _Message, *, expected: str) -> None:
    """Called when a record lacks the features of the `expected` kind: it is of the other kind, or empty."""
    other = "video" if expected == "frame" else "frame"
    is_other = (
        bool(message.lists)
        if other == "frame"
        else any(name in message.features for name in ("mean_rgb", "mean_audio"))
    )
    if is_other:
        holds = (
            "tf.train.SequenceExample with rgb/audio frames"
            if other == "frame"
            else ("tf.train.Example with mean_rgb/mean_audio")
        )
        raise InvalidRecordError(
            f"This is a {other}-level record ({holds}), not a {expected}-level one: use "
            f"--input_format={other} (input_format='{other}') for this data",
            reason="wrong_record_kind",
            video_id=_try_id(message),
        )
    if not message.features:
        raise InvalidRecordError(
            f"Record of {len(message.data)} bytes holds no features at all; not a YouTube-8M record",
            reason="not_an_example",
        )


def parse_frame_example(
    serialized: bytes, *, max_frames: int | None = MAX_FRAMES, num_classes: int | None = NUM_CLASSES
) -> dict[str, Any]:
    """Parse and validate one frame-level record (`tf.train.SequenceExample`).

    Args:
        serialized: the record's bytes.
        max_frames: frames kept per video (the rest are not validated or copied); None keeps all.
        num_classes: label ids must lie in [0, num_classes); None keeps any label id (scoring keeps the
            ground truth of another vocabulary as it is).

    Returns:
        dict with `id` (str), `labels` (list[int]), `rgb` uint8 [T, 1024] and `audio` uint8 [T, 128] (the
        quantized frames as stored: read-only views of `serialized`), and `num_frames` (int,
        T = min(frames, max_frames)). When the record carries the 2019 segment annotations, also
        `segment_start_times` (list[int]), `segment_labels` (list[int]) and `segment_scores` (list[float]),
        checked to have equal lengths and start times inside the video.

    Raises:
        InvalidRecordError: the record is malformed; `.reason` says how.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    message = _Message(_as_bytes(serialized))
    if "rgb" not in message.lists and "audio" not in message.lists:
        _reject_other_kind(message, expected="frame")
    video_id = _read_id(message)
    for name in ("rgb", "audio"):
        if name not in message.lists:
            raise InvalidRecordError(
                f"Record has no '{name}' feature list", reason=f"missing_{name}", video_id=video_id
            )
    labels = _read_labels(message, num_classes, video_id)
    n_rgb, rgb = _scan_frames(message, "rgb", RGB_SIZE, video_id)
    n_audio, audio = _scan_frames(message, "audio", AUDIO_SIZE, video_id)
    if n_rgb != n_audio:
        raise InvalidRecordError(
            f"rgb has {n_rgb} frames but audio has {n_audio}; both must have one value per frame",
            reason="frame_count_mismatch",
            video_id=video_id,
        )
    if n_rgb == 0:
        raise InvalidRecordError("Record has zero frames", reason="no_frames", video_id=video_id)
    num_kept = n_rgb if max_frames is None else min(n_rgb, max_frames)
    if rgb is None:
        rgb = _decode_frames(message, "rgb", RGB_SIZE, num_kept, video_id)
    if audio is None:
        audio = _decode_frames(message, "audio", AUDIO_SIZE, num_kept, video_id)
    rgb, audio = rgb[:num_kept], audio[:num_kept]
    out: dict[str, Any] = {
        "id": video_id,
        "labels": labels,
        "rgb": rgb,
        "audio": audio,
        "num_frames": int(rgb.shape[0]),
    }
    out.update(_read_segments(message, video_id, n_rgb))
    return out


def _read_floats(message: _Message, name: str, size: int, video_id: str) -> np.ndarray:  # [size] float32
    feat = message.feature(name)
    if feat.kind != "float_list":
        raise InvalidRecordError(
            f"'{name}' must be a float list, found {feat.describe()}",
            reason="bad_feature_type",
            video_id=video_id,
        )
    values = feat.values
    if values.shape != (size,):
        raise InvalidRecordError(
            f"'{name}' has {values.size} floats; expected {size}",
            reason="bad_feature_length",
            video_id=video_id,
        )
    if not np.all(np.isfinite(values)):
        raise InvalidRecordError(
            f"'{name}' holds NaN or infinite values", reason="non_finite_values", video_id=video_id
        )
    return values


def parse_video_example(serialized: bytes, *, num_classes: int | None = NUM_CLASSES) -> dict[str, Any]:
    """Parse and validate one video-level record (`tf.train.Example`).

    Args:
        serialized: the record's bytes.
        num_classes: label ids must lie in [0, num_classes); None keeps any label id.

    Returns:
        dict with `id` (str), `labels` (list[int]), `mean_rgb` float32 [1024], `mean_audio` float32 [128].

    Raises:
        InvalidRecordError: the record is malformed; `.reason` says how.
    """
    message = _Message(_as_bytes(serialized))
    if "mean_rgb" not in message.features and "mean_audio" not in message.features:
        _reject_other_kind(message, expected="video")
    video_id = _read_id(message)
    for name in ("mean_rgb", "mean_audio"):
        if name not in message.features:
            raise InvalidRecordError(
                f"Record has no '{name}' feature", reason=f"missing_{name}", video_id=video_id
            )
    labels = _read_labels(message, num_classes, video_id)
    return {
        "id": video_id,
        "labels": labels,
        "mean_rgb": _read_floats(message, "mean_rgb", RGB_SIZE, video_id),
        "mean_audio": _read_floats(message, "mean_audio", AUDIO_SIZE, video_id),
    }


def _as_bytes(serialized: Any) -> bytes:
    if isinstance(serialized, bytes):
        return serialized
    if isinstance(serialized, bytearray | memoryview):
        return bytes(serialized)
    if hasattr(serialized, "numpy") and getattr(serialized, "dtype", None) is not None:
        value = serialized.numpy()  # a scalar string tensor
        if isinstance(value, bytes):
            return value
    raise TypeError(
        f"Expected a serialized record (bytes), got {type(serialized).__name__}; read records with "
        "`iter_tfrecords` (or tf.data / Beam) and pass each record's bytes."
    )
