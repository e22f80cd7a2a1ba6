"""The YouTube-8M record format: parse, validate, write, and read it with `tf.data`.

Frame level: `tf.train.SequenceExample` with context `id` (bytes), `labels` (int64 list) and optional
`segment_start_times` / `segment_labels` / `segment_scores`; feature lists `rgb` (one 1024-byte value per
frame) and `audio` (one 128-byte value per frame), uint8-quantized.
Video level: `tf.train.Example` with `id`, `labels`, `mean_rgb` (1024 floats), `mean_audio` (128 floats).

Three kinds of users:

- Record-at-a-time code (the Beam pipelines, the trainer's pre-flight check) calls `parse_frame_example`
  / `parse_video_example`, which validate everything and raise `InvalidRecordError` with a machine-usable
  `reason` for anything malformed.
- Training calls `make_dataset`, which parses whole batches with `tf.io` ops and pads each batch to its own
  longest video.
- Data generators call `frame_example_bytes` / `video_example_bytes`, which hand-encode the protobuf
  wire format (byte-identical in meaning to the protos, an order of magnitude faster than building
  per-frame proto objects), and `write_tfrecords`.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

logger = logging.getLogger(__name__)

RGB_SIZE = 1024  # bytes per quantized rgb frame (Inception features after PCA)
AUDIO_SIZE = 128  # bytes per quantized audio frame (VGGish features)
MAX_FRAMES = 300  # frames kept per video; YouTube-8M samples one frame per second
NUM_CLASSES = 3862  # 2018 vocabulary

# Quantization range used by the dataset's feature extractor.
_MIN_Q = -2.0
_MAX_Q = 2.0
_DEQ_SCALE = (_MAX_Q - _MIN_Q) / 255.0  # 4/255
_DEQ_BIAS = (_MAX_Q - _MIN_Q) / 512.0 + _MIN_Q  # 4/512 - 2
_RGB_MEAN_OFFSET = (_MAX_Q - _MIN_Q) / 512.0  # 4/512: removed before reverse whitening

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
)


class InvalidRecordError(ValueError):
    """A record that is not a valid YouTube-8M record of the expected kind.

    Attributes:
        reason: short slug from `INVALID_REASONS` (e.g. `"bad_frame_length"`), for counting dead letters.
        video_id: the record's `id` when it could be read, else None.
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


# --------------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------------


def dequantize(q: Any) -> Any:
    """Map quantized uint8 features back to floats: `x = q * (4/255) + (4/512 - 2)`.

    This is the dataset's reference reader formula, evaluated in float32 like it.

    Args:
        q: uint8 values, a numpy array (or anything `np.asarray` accepts) or a `tf.Tensor`.

    Returns:
        float32 array (numpy in, numpy out; tensor in, tensor out), same shape as `q`.
    """
    if isinstance(q, tf.Tensor | tf.Variable):
        return _dequantize_tf(q)
    return np.asarray(q).astype(np.float32) * np.float32(_DEQ_SCALE) + np.float32(_DEQ_BIAS)


def _dequantize_tf(q: tf.Tensor) -> tf.Tensor:
    return tf.cast(q, tf.float32) * _DEQ_SCALE + _DEQ_BIAS


def quantize(x: Any) -> np.ndarray:
    """Quantize float features as the dataset's extractor does: `round((clip(x, -2, 2) + 2) * 255/4)`.

    Rounding is half-to-even (Python 3 `round`, `np.rint`), computed in float32.

    Args:
        x: float features, any shape.

    Returns:
        uint8 numpy array of the same shape.
    """
    x = np.clip(np.asarray(x, dtype=np.float32), np.float32(_MIN_Q), np.float32(_MAX_Q))
    return np.rint((x - np.float32(_MIN_Q)) * np.float32(255.0 / (_MAX_Q - _MIN_Q))).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Reverse whitening (NeXtVLAD paper §3.3)
# --------------------------------------------------------------------------------------------------


def reverse_whitening_scale(eigenvals_path: str) -> np.ndarray:
    """Per-dimension scale that undoes YouTube-8M's PCA whitening of the rgb features.

    Args:
        eigenvals_path: path (local or gs://) of the dataset's `yt8m_pca/eigenvals.npy`, shape (2048, 1)
            or (2048,): the first 1024 rows belong to the rgb features.

    Returns:
        float32 [1024]: `sqrt(eigenvals[:1024]) + 1e-4`.
    """
    with tf.io.gfile.GFile(eigenvals_path, "rb") as f:
        eig = np.load(f, allow_pickle=False)
    if not (eig.ndim == 1 or (eig.ndim == 2 and eig.shape[1] == 1)) or eig.shape[0] < RGB_SIZE:
        raise ValueError(
            f"{eigenvals_path} has shape {eig.shape}; expected the YouTube-8M PCA eigenvalues of shape "
            f"(2048, 1) (at least {RGB_SIZE} rows, rgb first). Pass the `yt8m_pca/eigenvals.npy` file."
        )
    eig = eig.reshape(-1)[:RGB_SIZE].astype(np.float64)
    if not np.all(np.isfinite(eig)) or np.any(eig < 0):
        raise ValueError(f"{eigenvals_path} holds negative or non-finite eigenvalues; is it the right file?")
    return (np.sqrt(eig) + 1e-4).astype(np.float32)


def reverse_whiten(rgb: Any, scale: Any) -> Any:
    """Apply reverse whitening to dequantized rgb features: `(rgb - 4/512) * scale`.

    Args:
        rgb: dequantized rgb, [..., 1024], numpy or `tf.Tensor`.
        scale: [1024] from `reverse_whitening_scale`.

    Returns:
        float32 [..., 1024], numpy or tensor like `rgb`.
    """
    if isinstance(rgb, tf.Tensor | tf.Variable):
        return (rgb - _RGB_MEAN_OFFSET) * tf.cast(scale, rgb.dtype)
    rgb = np.asarray(rgb, dtype=np.float32)
    return (rgb - np.float32(_RGB_MEAN_OFFSET)) * np.asarray(scale, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Record-at-a-time parsers (validating)
# --------------------------------------------------------------------------------------------------


def _as_bytes(serialized: Any) -> bytes:
    if isinstance(serialized, bytes | bytearray | memoryview):
        return bytes(serialized)
    if isinstance(serialized, tf.Tensor) and serialized.dtype == tf.string and serialized.shape.rank == 0:
        return serialized.numpy()
    raise TypeError(
        f"Expected a serialized record (bytes), got {type(serialized).__name__}; read records with "
        "tf.data.TFRecordDataset / beam ReadFromTFRecord and pass each record's bytes."
    )


def _parse_proto(cls: type, serialized: bytes, expected: str) -> Any:
    try:
        return cls.FromString(serialized)
    except DecodeError as e:
        raise InvalidRecordError(
            f"Record of {len(serialized)} bytes is not a serialized {expected} ({e}); is this a TFRecord "
            "file of YouTube-8M records?",
            reason="not_an_example",
        ) from None


def _kind(feature: Any) -> str | None:
    return feature.WhichOneof("kind")


def _read_id(features: Any) -> str:
    if "id" not in features:
        raise InvalidRecordError("Record has no 'id' feature", reason="missing_id")
    feat = features["id"]
    if _kind(feat) != "bytes_list" or len(feat.bytes_list.value) != 1:
        raise InvalidRecordError(
            f"'id' must hold exactly one bytes value, found {_describe(feat)}", reason="bad_feature_type"
        )
    raw = feat.bytes_list.value[0]
    if not raw:
        raise InvalidRecordError("'id' is empty", reason="bad_id")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecordError(f"'id' is not UTF-8 text: {raw[:40]!r}", reason="bad_id") from None


def _describe(feat: Any) -> str:
    kind = _kind(feat)
    if kind is None:
        return "an empty feature"
    return f"{kind} with {len(getattr(feat, kind).value)} values"


def _read_labels(features: Any, num_classes: int, video_id: str) -> list[int]:
    if "labels" not in features:
        return []  # unlabeled (e.g. test split)
    feat = features["labels"]
    kind = _kind(feat)
    if kind is None:
        return []
    if kind != "int64_list":
        raise InvalidRecordError(
            f"'labels' must be an int64 list, found {_describe(feat)}",
            reason="bad_feature_type",
            video_id=video_id,
        )
    labels = list(feat.int64_list.value)
    bad = [v for v in labels if v < 0 or v >= num_classes]
    if bad:
        raise InvalidRecordError(
            f"label ids {bad} are outside [0, {num_classes}); pass the right num_classes for this vocabulary",
            reason="label_out_of_range",
            video_id=video_id,
        )
    return labels


@functools.cache
def _frame_prefix(size: int) -> bytes:
    """Wire bytes in front of each frame in a canonically encoded FeatureList of `size`-byte frames."""
    bytes_list_len = 1 + len(_varint(size)) + size  # BytesList { value: <size bytes> }
    feature_len = 1 + len(_varint(bytes_list_len)) + bytes_list_len  # Feature { bytes_list }
    return _F1 + _varint(feature_len) + _F1 + _varint(bytes_list_len) + _F1 + _varint(size)


def _read_frames(feature_list: Any, num_kept: int, size: int, name: str, video_id: str) -> np.ndarray:
    """The first `num_kept` frames of a FeatureList as uint8 [num_kept, size], validated."""
    # Fast path: re-encode the list (one C call) and check the framing bytes of every frame at once.
    # When each frame's prefix is the canonical "one bytes value of `size` bytes" the layout is fixed,
    # so the frames are the remaining columns. Anything else takes the slow path for a precise error.
    prefix = _frame_prefix(size)
    stride = len(prefix) + size
    body = feature_list.SerializeToString()
    if len(body) == len(feature_list.feature) * stride:
        rows = np.frombuffer(body, dtype=np.uint8).reshape(-1, stride)[:num_kept]  # [T, prefix + size]
        if np.array_equal(
            rows[:, : len(prefix)], np.broadcast_to(np.frombuffer(prefix, np.uint8), (num_kept, len(prefix)))
        ):
            return rows[:, len(prefix) :]

    frames = feature_list.feature
    values = []
    for i in range(num_kept):
        feat = frames[i]
        if _kind(feat) != "bytes_list":
            raise InvalidRecordError(
                f"{name} frame {i} must be a bytes value, found {_describe(feat)}",
                reason="bad_feature_type",
                video_id=video_id,
            )
        v = feat.bytes_list.value
        if len(v) != 1 or len(v[0]) != size:
            raise InvalidRecordError(
                f"{name} frame {i} holds byte strings of lengths {[len(b) for b in v]}; "
                f"expected one value of {size} bytes",
                reason="bad_frame_length",
                video_id=video_id,
            )
        values.append(v[0])
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(num_kept, size)


def parse_frame_example(
    serialized: bytes, *, max_frames: int = MAX_FRAMES, num_classes: int = NUM_CLASSES
) -> dict[str, Any]:
    """Parse and validate one frame-level record (`tf.train.SequenceExample`).

    Frames beyond `max_frames` are dropped unread; the frames kept are validated.

    Args:
        serialized: the record's bytes.
        max_frames: frames kept per video.
        num_classes: size of the label vocabulary; label ids must lie in [0, num_classes).

    Returns:
        dict with `id` (str), `labels` (list[int]), `rgb` float32 [T, 1024] and `audio` float32 [T, 128]
        (dequantized), and `num_frames` (int, T = min(frames, max_frames)). When the record carries the
        2019 segment annotations, also `segment_start_times` (list[int]), `segment_labels` (list[int]) and
        `segment_scores` (list[float]).

    Raises:
        InvalidRecordError: the record is malformed; `.reason` says how.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    data = _as_bytes(serialized)
    seq = _parse_proto(tf.train.SequenceExample, data, "tf.train.SequenceExample")
    context = seq.context.feature
    lists = seq.feature_lists.feature_list
    if "rgb" not in lists and "audio" not in lists:
        if "mean_rgb" in context or "mean_audio" in context:
            raise InvalidRecordError(
                "This is a video-level record (tf.train.Example with mean_rgb/mean_audio), not a frame-level "
                "one: use --input_format=video (input_format='video') for this data",
                reason="wrong_record_kind",
                video_id=_try_id(context),
            )
        if not context:
            raise InvalidRecordError(
                f"Record of {len(data)} bytes holds no features at all; not a YouTube-8M record",
                reason="not_an_example",
            )
    video_id = _read_id(context)
    for name in ("rgb", "audio"):
        if name not in lists:
            raise InvalidRecordError(
                f"Record has no '{name}' feature list", reason=f"missing_{name}", video_id=video_id
            )
    labels = _read_labels(context, num_classes, video_id)
    n_rgb, n_audio = len(lists["rgb"].feature), len(lists["audio"].feature)
    if n_rgb != n_audio:
        raise InvalidRecordError(
            f"rgb has {n_rgb} frames but audio has {n_audio}; both must have one value per frame",
            reason="frame_count_mismatch",
            video_id=video_id,
        )
    if n_rgb == 0:
        raise InvalidRecordError("Record has zero frames", reason="no_frames", video_id=video_id)
    num_frames = min(n_rgb, max_frames)
    rgb_q = _read_frames(lists["rgb"], num_frames, RGB_SIZE, "rgb", video_id)  # [T, 1024]
    audio_q = _read_frames(lists["audio"], num_frames, AUDIO_SIZE, "audio", video_id)  # [T, 128]
    out: dict[str, Any] = {
        "id": video_id,
        "labels": labels,
        "rgb": dequantize(rgb_q),
        "audio": dequantize(audio_q),
        "num_frames": num_frames,
    }
    out.update(_read_segments(context, video_id))
    return out


def _try_id(features: Any) -> str | None:
    try:
        return _read_id(features)
    except InvalidRecordError:
        return None


_SEGMENT_KINDS = {
    "segment_start_times": "int64_list",
    "segment_labels": "int64_list",
    "segment_scores": "float_list",
}


def _read_segments(context: Any, video_id: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for name, kind in _SEGMENT_KINDS.items():
        if name not in context:
            continue
        feat = context[name]
        if _kind(feat) not in (kind, None):
            raise InvalidRecordError(
                f"'{name}' must be {kind}, found {_describe(feat)}",
                reason="bad_feature_type",
                video_id=video_id,
            )
        out[name] = list(getattr(feat, kind).value)
    return out


def _read_floats(features: Any, name: str, size: int, video_id: str) -> np.ndarray:  # [size] float32
    feat = features[name]
    if _kind(feat) != "float_list":
        raise InvalidRecordError(
            f"'{name}' must be a float list, found {_describe(feat)}",
            reason="bad_feature_type",
            video_id=video_id,
        )
    values = np.asarray(feat.float_list.value, dtype=np.float32)
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


def parse_video_example(serialized: bytes, *, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Parse and validate one video-level record (`tf.train.Example`).

    Args:
        serialized: the record's bytes.
        num_classes: size of the label vocabulary; label ids must lie in [0, num_classes).

    Returns:
        dict with `id` (str), `labels` (list[int]), `mean_rgb` float32 [1024], `mean_audio` float32 [128].

    Raises:
        InvalidRecordError: the record is malformed; `.reason` says how.
    """
    data = _as_bytes(serialized)
    example = _parse_proto(tf.train.Example, data, "tf.train.Example")
    features = example.features.feature
    if "mean_rgb" not in features and "mean_audio" not in features:
        # A SequenceExample parses as an Example too (its context lands in `features`, its frames are
        # skipped as an unknown field); tell it apart by its feature lists.
        if _has_frame_lists(data):
            raise InvalidRecordError(
                "This is a frame-level record (tf.train.SequenceExample with rgb/audio frames), not a "
                "video-level one: use --input_format=frame (input_format='frame') for this data",
                reason="wrong_record_kind",
                video_id=_try_id(features),
            )
        if not features:
            raise InvalidRecordError(
                f"Record of {len(data)} bytes holds no features at all; not a YouTube-8M record",
                reason="not_an_example",
            )
    video_id = _read_id(features)
    for name in ("mean_rgb", "mean_audio"):
        if name not in features:
            raise InvalidRecordError(
                f"Record has no '{name}' feature", reason=f"missing_{name}", video_id=video_id
            )
    labels = _read_labels(features, num_classes, video_id)
    return {
        "id": video_id,
        "labels": labels,
        "mean_rgb": _read_floats(features, "mean_rgb", RGB_SIZE, video_id),
        "mean_audio": _read_floats(features, "mean_audio", AUDIO_SIZE, video_id),
    }


def _has_frame_lists(data: bytes) -> bool:
    try:
        seq = tf.train.SequenceExample.FromString(data)
    except DecodeError:
        return False
    return len(seq.feature_lists.feature_list) > 0


# --------------------------------------------------------------------------------------------------
# Fast writers: hand-encoded protobuf wire format
# --------------------------------------------------------------------------------------------------
# Wire-format reminders (tensorflow/core/example/{example,feature}.proto):
#   Example { Features features = 1; }
#   SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }
#   Features { map<string, Feature> feature = 1; }
#   FeatureLists { map<string, FeatureList> feature_list = 1; }
#   map entry { key = 1; value = 2; }   FeatureList { repeated Feature feature = 1; }
#   Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }   FloatList/Int64List { repeated value = 1 [packed = true]; }
# A length-delimited field is `tag varint(len) payload`, tag = (field << 3) | 2.

_F1 = b"\x0a"  # field 1, length-delimited
_F2 = b"\x12"  # field 2, length-delimited
_F3 = b"\x1a"  # field 3, length-delimited
_U64 = (1 << 64) - 1


def _varint(n: int) -> bytes:
    n &= _U64  # negative int64 values are encoded as their 64-bit two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[bytes]) -> bytes:
    return _field(_F1, b"".join(_field(_F1, v) for v in values))


def _int64_feature(values: Iterable[int]) -> bytes:
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(_F3, _field(_F1, packed) if packed else b"")


def _float_feature(values: Any) -> bytes:
    packed = np.asarray(values, dtype="<f4").tobytes()
    return _field(_F2, _field(_F1, packed) if packed else b"")


def _features(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """Features message body from (key, encoded Feature) pairs."""
    return b"".join(_field(_F1, _field(_F1, key.encode()) + _field(_F2, feat)) for key, feat in entries)


def _frame_list_parts(key: str, frames_q: np.ndarray) -> tuple[int, list[Any]]:
    """One FeatureLists map entry for uint8 frames [T, D], as (encoded length, byte chunks).

    Every frame's Feature has the same size, so all framing bytes are identical: write them into a
    [T, prefix + D] uint8 array next to the data in one numpy copy instead of T proto objects.
    """
    num, dim = frames_q.shape
    prefix = _frame_prefix(dim)
    rows = np.empty((num, len(prefix) + dim), dtype=np.uint8)  # [T, prefix + D]
    rows[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    rows[:, len(prefix) :] = frames_q
    body_len = rows.size  # FeatureList body
    key_field = _field(_F1, key.encode())
    value_head = _F2 + _varint(body_len)
    entry_len = len(key_field) + len(value_head) + body_len
    entry_head = _F1 + _varint(entry_len)
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


def frame_example_bytes(
    video_id: str,
    labels: Iterable[int],
    rgb_q: np.ndarray,
    audio_q: np.ndarray,
    *,
    segments: Mapping[str, Sequence[float]] | None = None,
) -> bytes:
    """Serialize one frame-level record (`tf.train.SequenceExample`) without building proto objects.

    Args:
        video_id: the video's id (stored as UTF-8 bytes).
        labels: class ids (may be empty).
        rgb_q: uint8 [T, 1024] quantized rgb frames, T >= 1.
        audio_q: uint8 [T, 128] quantized audio frames.
        segments: optional 2019-style segment annotations, a mapping with keys `segment_start_times`
            (ints), `segment_labels` (ints) and `segment_scores` (floats), all the same length.

    Returns:
        The serialized SequenceExample; `tf.train.SequenceExample.FromString` gives the same message as
        building it with protos.
    """
    rgb_q = _check_frames("rgb", rgb_q, RGB_SIZE)
    audio_q = _check_frames("audio", audio_q, AUDIO_SIZE)
    if rgb_q.shape[0] != audio_q.shape[0]:
        raise ValueError(f"rgb has {rgb_q.shape[0]} frames but audio has {audio_q.shape[0]}; they must match")
    if rgb_q.shape[0] == 0:
        raise ValueError(f"video {video_id!r} has no frames; every record needs at least one")
    context_entries = [
        ("id", _bytes_feature([video_id.encode()])),
        ("labels", _int64_feature(_check_labels(labels))),
    ]
    if segments is not None:
        context_entries += _segment_entries(segments)
    context = _features(context_entries)

    rgb_len, rgb_parts = _frame_list_parts("rgb", rgb_q)
    audio_len, audio_parts = _frame_list_parts("audio", audio_q)
    return b"".join([_field(_F1, context), _F2, _varint(rgb_len + audio_len), *rgb_parts, *audio_parts])


def _segment_entries(segments: Mapping[str, Sequence[float]]) -> list[tuple[str, bytes]]:
    unknown = set(segments) - set(_SEGMENT_KINDS)
    if unknown:
        raise ValueError(f"Unknown segment fields {sorted(unknown)}; expected {sorted(_SEGMENT_KINDS)}")
    lengths = {k: len(v) for k, v in segments.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"segment fields must have equal lengths, got {lengths}")
    entries = []
    for name, kind in _SEGMENT_KINDS.items():
        if name in segments:
            encode = _int64_feature if kind == "int64_list" else _float_feature
            entries.append((name, encode(segments[name])))
    return entries


def video_example_bytes(video_id: str, labels: Iterable[int], mean_rgb: Any, mean_audio: Any) -> bytes:
    """Serialize one video-level record (`tf.train.Example`).

    Args:
        video_id: the video's id.
        labels: class ids (may be empty).
        mean_rgb: [1024] floats (mean of the dequantized rgb frames in the dataset).
        mean_audio: [128] floats.

    Returns:
        The serialized Example.
    """
    mean_rgb = np.asarray(mean_rgb, dtype=np.float32)
    mean_audio = np.asarray(mean_audio, dtype=np.float32)
    if mean_rgb.shape != (RGB_SIZE,) or mean_audio.shape != (AUDIO_SIZE,):
        raise ValueError(
            f"mean_rgb must be [{RGB_SIZE}] and mean_audio [{AUDIO_SIZE}], "
            f"got {mean_rgb.shape} and {mean_audio.shape}"
        )
    features = _features(
        [
            ("id", _bytes_feature([video_id.encode()])),
            ("labels", _int64_feature(_check_labels(labels))),
            ("mean_rgb", _float_feature(mean_rgb)),
            ("mean_audio", _float_feature(mean_audio)),
        ]
    )
    return _field(_F1, features)


def write_tfrecords(path: str, records: Iterable[bytes]) -> int:
    """Write serialized records to one uncompressed TFRecord file (local or gs://).

    Args:
        path: output file; a local parent directory is created if missing.
        records: serialized records.

    Returns:
        The number of records written.
    """
    if "://" not in path:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
            count += 1
    logger.debug("wrote %d records to %s", count, path)
    return count


# --------------------------------------------------------------------------------------------------
# File helpers
# --------------------------------------------------------------------------------------------------


def expand_file_pattern(file_pattern: str | Sequence[str]) -> list[str]:
    """Expand glob pattern(s) (local or gs://) into a sorted, de-duplicated list of files.

    Args:
        file_pattern: one pattern or a sequence of patterns.

    Returns:
        Matching file paths.

    Raises:
        FileNotFoundError: a pattern matches nothing (the message names it).
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    if not patterns:
        raise ValueError("No file pattern given; pass e.g. 'data/train*.tfrecord'")
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"No files match {pattern!r}; check the path (local or gs://) and glob")
        files.extend(matched)
    return list(dict.fromkeys(files))


def _count_local_records(path: str) -> int:
    """Walk the TFRecord framing (uint64 length, crc, data, crc) without reading the payloads."""
    size = os.path.getsize(path)
    count = 0
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"{path} is truncated or not a TFRecord file (partial header at byte {pos})")
            (length,) = struct.unpack("<Q", header[:8])
            pos += 12 + length + 4
            if pos > size:
                raise ValueError(
                    f"{path} is truncated or not a TFRecord file (record {count} runs past the end)"
                )
            f.seek(pos)
            count += 1
    return count


def count_records(file_pattern: str | Sequence[str]) -> int:
    """Number of records in the matching TFRecord files.

    Local files are counted from the record framing alone (fast: no payload is read); remote files
    are read through `tf.data`.

    Args:
        file_pattern: pattern(s) as for `make_dataset`.

    Returns:
        Total record count.
    """
    total = 0
    for path in expand_file_pattern(file_pattern):
        if "://" in path:
            total += int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
        else:
            total += _count_local_records(path)
    return total


def peek_records(file_pattern: str | Sequence[str], n: int = 8) -> list[bytes]:
    """The first `n` records (in sorted file order) of the matching files, as bytes.

    Args:
        file_pattern: pattern(s) as for `make_dataset`.
        n: how many records.

    Returns:
        Up to `n` serialized records.
    """
    files = expand_file_pattern(file_pattern)
    return [r.numpy() for r in tf.data.TFRecordDataset(files).take(n)]


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
            "num_classes; pass the right num_classes",
        ),
    ]
    ids = _after(checks, ids)
    index = tf.stack([tf.cast(labels.value_rowids(), tf.int64), ids], axis=1)  # [L, 2]
    zeros = tf.zeros(
        tf.stack([tf.cast(labels.nrows(), tf.int64), tf.constant(num_classes, tf.int64)]), tf.float32
    )
    return tf.tensor_scatter_nd_max(zeros, index, tf.ones_like(ids, tf.float32))


def _frames_to_padded(
    frames: tf.RaggedTensor,
    size: int,
    name: str,
    max_frames: int,
    checks: Sequence[Any],
    scale: np.ndarray | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Ragged [B, (T), (V)] frame strings -> dequantized [B, T_max, size] float32 padded with 0, [B] int32."""
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
    values = _dequantize_tf(values)
    if scale is not None:
        values = reverse_whiten(values, scale)
    # Transform before padding so that padding stays exactly 0.
    dense = frames.with_flat_values(values).to_tensor(0.0)  # [B, T_max, size]
    return dense, tf.cast(frames.row_lengths(), tf.int32)


def _parse_frame_batch(
    serialized: tf.Tensor, num_classes: int, max_frames: int, scale: np.ndarray | None, include_ids: bool
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    context, sequences, _ = tf.io.parse_sequence_example(
        serialized,
        context_features={
            "id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.RaggedFeature(tf.int64),
        },
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
    rgb, num_frames = _frames_to_padded(sequences["rgb"], RGB_SIZE, "rgb", max_frames, checks, scale)
    audio, _ = _frames_to_padded(sequences["audio"], AUDIO_SIZE, "audio", max_frames, checks)
    features = {"rgb": rgb, "audio": audio, "num_frames": num_frames}
    if include_ids:
        features["id"] = context["id"]
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
    serialized: tf.Tensor, num_classes: int, scale: np.ndarray | None, include_ids: bool
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    parsed = tf.io.parse_example(
        serialized,
        {
            "id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.RaggedFeature(tf.int64),
            "mean_rgb": tf.io.RaggedFeature(tf.float32),
            "mean_audio": tf.io.RaggedFeature(tf.float32),
        },
    )
    mean_rgb = _dense_floats(parsed["mean_rgb"], RGB_SIZE, "mean_rgb")
    if scale is not None:
        mean_rgb = reverse_whiten(mean_rgb, scale)
    features = {
        "mean_rgb": mean_rgb,
        "mean_audio": _dense_floats(parsed["mean_audio"], AUDIO_SIZE, "mean_audio"),
    }
    if include_ids:
        features["id"] = parsed["id"]
    return features, _labels_multi_hot(parsed["labels"], num_classes)


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
    pca_eigenvals: str | None = None,
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
        pca_eigenvals: path of `yt8m_pca/eigenvals.npy`; when given, rgb (or mean_rgb) is reverse-whitened.
        include_ids: also return `features["id"]` [B] string.
        drop_remainder: drop the last partial batch (static batch dimension).
        num_parallel_reads: files read concurrently (default: min(#files, 16)).

    Returns:
        A dataset of `(features, labels)`. Frame level: features `rgb` float32 [B, T, 1024], `audio`
        float32 [B, T, 128], `num_frames` int32 [B]; video level: `mean_rgb` float32 [B, 1024],
        `mean_audio` float32 [B, 128]. labels: multi-hot float32 [B, num_classes].
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if batch_size < 1 or max_frames < 1 or num_classes < 1:
        raise ValueError(
            "batch_size, max_frames and num_classes must be >= 1, "
            f"got {batch_size}, {max_frames}, {num_classes}"
        )
    files = expand_file_pattern(file_pattern)
    scale = reverse_whitening_scale(pca_eigenvals) if pca_eigenvals else None
    deterministic = seed is not None or not shuffle
    cycle = num_parallel_reads or min(len(files), 16)
    logger.info("reading %d %s-level files (%d in parallel)", len(files), input_format, cycle)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if input_format == "frame":
        parse = functools.partial(
            _parse_frame_batch,
            num_classes=num_classes,
            max_frames=max_frames,
            scale=scale,
            include_ids=include_ids,
        )
    else:
        parse = functools.partial(
            _parse_video_batch, num_classes=num_classes, scale=scale, include_ids=include_ids
        )
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


def parse_label_names(text: str, *, source: str = "label names") -> dict[int, str]:
    """Class names from the text of a `label_id,label_name` CSV (or the dataset's `vocabulary.csv`).

    Args:
        text: the CSV's contents, with a header row.
        source: where the text came from, for error messages.

    Returns:
        `{class_id: name}`; blank names stay blank (56 of the 2018 vocabulary's are).

    Raises:
        ValueError: the header has neither layout, or an id is not an integer.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    for id_key, name_key in (("label_id", "label_name"), ("Index", "Name")):
        if id_key in header and name_key in header:
            break
    else:
        raise ValueError(
            f"{source} has columns {header}; expected a 'label_id,label_name' header "
            "(or the YouTube-8M vocabulary.csv with 'Index' and 'Name')"
        )
    names = {}
    for line, row in enumerate(reader, start=2):
        try:
            names[int(row[id_key])] = (row[name_key] or "").strip()
        except (TypeError, ValueError):
            raise ValueError(f"{source} line {line}: {id_key}={row[id_key]!r} is not an integer") from None
    return names
