"""The YouTube-8M record format without TensorFlow: parse, validate and write records, read label names.

Frame level: `tf.train.SequenceExample` with context `id` (bytes; `video_id` in the 2017 release),
`labels` (int64 list) and optional `segment_start_times` / `segment_labels` / `segment_scores` (the 2019
segment-rated release); feature lists `rgb` (one 1024-byte value per frame) and `audio` (one 128-byte value
per frame), uint8-quantized. Video level: `tf.train.Example` with `id`, `labels`, `mean_rgb` (1024 floats)
and `mean_audio` (128 floats).

The parsers read the protobuf wire format directly (no message objects, no re-encoding): a frame list
whose frames are canonically encoded, which is what every writer produces, becomes one uint8 array view
`[T, D]` of the record's bytes after one vectorised check of every frame's framing bytes. Anything else
takes a field-by-field path that gives the same answer or the same precise error. Everything here is
numpy and the standard library, so the scoring path runs on any Keras backend without TensorFlow.

Wire format (tensorflow/core/example/{example,feature}.proto):
  Example { Features features = 1; }
  SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }
  Features { map<string, Feature> feature = 1; }   FeatureLists { map<string, FeatureList> feature_list = 1; }
  map entry { key = 1; value = 2; }   FeatureList { repeated Feature feature = 1; }
  Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
  BytesList { repeated bytes value = 1; }   FloatList / Int64List { repeated value = 1 [packed = true]; }
A length-delimited field is `tag varint(len) payload`, tag = (field << 3) | wire type.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RGB_SIZE = 1024  # bytes per quantized rgb frame (Inception features after PCA)
AUDIO_SIZE = 128  # bytes per quantized audio frame (VGGish features)
MAX_FRAMES = 300  # frames kept per video; YouTube-8M samples one frame per second
NUM_CLASSES = 3862  # 2018 vocabulary
SEGMENT_FRAMES = 5  # a rated segment of the 2019 release covers 5 frames from its start time
ID_FEATURES = ("id", "video_id")  # the video id's feature name: 2018/2019 releases, 2017 release

# Quantization range used by the dataset's feature extractor.
MIN_QUANTIZED = -2.0
MAX_QUANTIZED = 2.0
DEQUANTIZE_SCALE = (MAX_QUANTIZED - MIN_QUANTIZED) / 255.0  # 4/255
DEQUANTIZE_BIAS = (MAX_QUANTIZED - MIN_QUANTIZED) / 512.0 + MIN_QUANTIZED  # 4/512 - 2
RGB_MEAN_OFFSET = (MAX_QUANTIZED - MIN_QUANTIZED) / 512.0  # 4/512: removed before reverse whitening

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


# --------------------------------------------------------------------------------------------------
# Quantization and reverse whitening (NeXtVLAD paper §3.3), numpy reference versions
# --------------------------------------------------------------------------------------------------


def dequantize(q: Any) -> np.ndarray:
    """Map quantized uint8 features back to floats: `x = q * (4/255) + (4/512 - 2)`, in float32.

    This is the dataset's reference reader formula; models do the same inside (`Dequantize` layers).
    """
    return np.asarray(q).astype(np.float32) * np.float32(DEQUANTIZE_SCALE) + np.float32(DEQUANTIZE_BIAS)


def quantize(x: Any) -> np.ndarray:
    """Quantize float features as the dataset's extractor does: `round((clip(x, -2, 2) + 2) * 255/4)`.

    Rounding is half-to-even (`np.rint`), computed in float32. Returns uint8 of the same shape.
    """
    x = np.clip(np.asarray(x, dtype=np.float32), np.float32(MIN_QUANTIZED), np.float32(MAX_QUANTIZED))
    scale = np.float32(255.0 / (MAX_QUANTIZED - MIN_QUANTIZED))
    return np.rint((x - np.float32(MIN_QUANTIZED)) * scale).astype(np.uint8)


def reverse_whitening_scale(eigenvals_path: str) -> np.ndarray:
    """Per-dimension scale that undoes YouTube-8M's PCA whitening of the rgb features.

    Args:
        eigenvals_path: path (local or gs://) of the dataset's `yt8m_pca/eigenvals.npy`, shape (2048, 1)
            or (2048,): the first 1024 rows belong to the rgb features.

    Returns:
        float32 [1024]: `sqrt(eigenvals[:1024]) + 1e-4`.
    """
    eig = np.load(io.BytesIO(read_bytes(eigenvals_path)), allow_pickle=False)
    if not (eig.ndim == 1 or (eig.ndim == 2 and eig.shape[1] == 1)) or eig.shape[0] < RGB_SIZE:
        raise ValueError(
            f"{eigenvals_path} has shape {eig.shape}; expected the YouTube-8M PCA eigenvalues of shape "
            f"(2048, 1) (at least {RGB_SIZE} rows, rgb first). Pass the `yt8m_pca/eigenvals.npy` file."
        )
    eig = eig.reshape(-1)[:RGB_SIZE].astype(np.float64)
    if not np.all(np.isfinite(eig)) or np.any(eig < 0):
        raise ValueError(f"{eigenvals_path} holds negative or non-finite eigenvalues; is it the right file?")
    return (np.sqrt(eig) + 1e-4).astype(np.float32)


def reverse_whiten(rgb: Any, scale: Any) -> np.ndarray:
    """Reverse whitening of dequantized rgb features, `(rgb - 4/512) * scale` (numpy reference)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return (rgb - np.float32(RGB_MEAN_OFFSET)) * np.asarray(scale, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Files: local paths with the standard library, anything else (gs://) through Beam's filesystems
# --------------------------------------------------------------------------------------------------


def _is_remote(path: str) -> bool:
    return "://" in path


def read_bytes(path: str) -> bytes:
    """The whole content of a local or remote (gs://) file."""
    if not _is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole local or remote (gs://) file; a local parent directory is created if missing."""
    if _is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def read_text(path: str) -> str:
    """A UTF-8 text file, local or remote (a byte-order mark is dropped)."""
    return read_bytes(path).decode("utf-8-sig")


def masked_crc32c(data: bytes) -> int:
    """The TFRecord framing checksum: CRC-32C of `data`, rotated right by 15 bits plus a constant."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecords(path: str, records: Iterable[bytes]) -> int:
    """Write serialized records to one uncompressed TFRecord file (local or gs://).

    Each record is framed as `uint64 length, masked crc32c(length), data, masked crc32c(data)`, the
    format `tf.data.TFRecordDataset` reads.

    Args:
        path: output file; a local parent directory is created if missing.
        records: serialized records.

    Returns:
        The number of records written.
    """
    if _is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        opened = FileSystems.create(path)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        opened = open(path, "wb")  # noqa: SIM115  (closed by the `with` below)
    count = 0
    with opened as f:
        for record in records:
            header = struct.pack("<Q", len(record))
            f.write(header + struct.pack("<I", masked_crc32c(header)))
            f.write(record)
            f.write(struct.pack("<I", masked_crc32c(bytes(record))))
            count += 1
    logger.debug("wrote %d records to %s", count, path)
    return count


def iter_tfrecords(path: str) -> Iterator[bytes]:
    """The records of one local or remote TFRecord file, each checked against its CRCs."""
    data = read_bytes(path)
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError(f"{path} is truncated or not a TFRecord file (partial header at byte {pos})")
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        end = pos + 12 + length + 4
        if masked_crc32c(header) != length_crc or end > len(data):
            raise ValueError(f"{path} is corrupt or truncated at byte {pos}")
        record = data[pos + 12 : end - 4]
        if masked_crc32c(record) != struct.unpack("<I", data[end - 4 : end])[0]:
            raise ValueError(f"{path}: the record at byte {pos} fails its CRC check")
        yield record
        pos = end


# --------------------------------------------------------------------------------------------------
# Wire-format reader
# --------------------------------------------------------------------------------------------------


class _MalformedError(Exception):
    """The bytes are not a valid protobuf message."""


def _varint_at(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _MalformedError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _MalformedError("varint longer than 10 bytes")


_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """`(field number, wire type, a, b)` for each field in `buf[pos:end]`: a varint's value in `a`, else
    the payload's `[a, b)` range."""
    while pos < end:
        key, pos = _varint_at(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _MalformedError("field number 0")
        if wire == _VARINT:
            value, pos = _varint_at(buf, pos, end)
            yield number, wire, value, 0
            continue
        if wire == _LENGTH:
            size, pos = _varint_at(buf, pos, end)
            stop = pos + size
        elif wire == _FIXED64:
            stop = pos + 8
        elif wire == _FIXED32:
            stop = pos + 4
        else:
            raise _MalformedError(f"unsupported wire type {wire}")
        if stop > end:
            raise _MalformedError("field runs past the end of its message")
        yield number, wire, pos, stop
        pos = stop


def _messages(buf: bytes, pos: int, end: int, number: int) -> list[tuple[int, int]]:
    """The `[start, stop)` ranges of every length-delimited field `number` (repeated or merged)."""
    return [(a, b) for n, wire, a, b in _fields(buf, pos, end) if n == number and wire == _LENGTH]


def _map(buf: bytes, ranges: Sequence[tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """A `map<string, message>` (field 1 of `Features` / `FeatureLists`): key -> value range; last wins."""
    out: dict[str, tuple[int, int]] = {}
    for start, stop in ranges:
        for entry_start, entry_stop in _messages(buf, start, stop, 1):
            key, value = b"", (entry_stop, entry_stop)  # a missing value is an empty message
            for n, wire, a, b in _fields(buf, entry_start, entry_stop):
                if wire != _LENGTH:
                    continue
                if n == 1:
                    key = buf[a:b]
                elif n == 2:
                    value = (a, b)
            try:
                out[key.decode("utf-8")] = value
            except UnicodeDecodeError:
                raise _MalformedError("map key is not UTF-8") from None
    return out


_KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


class _Feature:
    """One decoded `Feature`: its kind (None when empty) and its values (list or float32 array)."""

    __slots__ = ("kind", "values")

    def __init__(self, kind: str | None, values: Any) -> None:
        self.kind, self.values = kind, values

    def describe(self) -> str:
        return "an empty feature" if self.kind is None else f"{self.kind} with {len(self.values)} values"


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_varints(buf: bytes, start: int, stop: int) -> list[int]:
    out, pos = [], start
    while pos < stop:
        value, pos = _varint_at(buf, pos, stop)
        out.append(_signed(value))
    return out


def _feature(buf: bytes, start: int, stop: int) -> _Feature:
    """Decodes a `Feature`; repeated occurrences of its list merge, and the last kind set wins."""
    kind_number, parts = 0, []
    for n, wire, a, b in _fields(buf, start, stop):
        if n in _KINDS and wire == _LENGTH:
            if n != kind_number:
                kind_number, parts = n, []
            parts.append((a, b))
    if not kind_number:
        return _Feature(None, [])
    values: Any = []
    if kind_number == 1:
        for a, b in parts:
            values += [buf[x:y] for n, wire, x, y in _fields(buf, a, b) if n == 1 and wire == _LENGTH]
    elif kind_number == 3:
        for a, b in parts:
            for n, wire, x, y in _fields(buf, a, b):
                if n != 1:
                    continue
                if wire == _VARINT:
                    values.append(_signed(x))
                elif wire == _LENGTH:
                    values += _packed_varints(buf, x, y)
    else:
        chunks = []
        for a, b in parts:
            for n, wire, x, y in _fields(buf, a, b):
                if n == 1 and wire in (_FIXED32, _LENGTH):
                    if (y - x) % 4:
                        raise _MalformedError("packed floats not a multiple of 4 bytes")
                    chunks.append(buf[x:y])
        values = np.frombuffer(b"".join(chunks), dtype="<f4").astype(np.float32)
    return _Feature(_KINDS[kind_number], values)


class _Message:
    """The top level of one record: its context/features map and, for SequenceExamples, its frame lists."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        try:
            top = list(_fields(data, 0, len(data)))
            self.features = _map(data, [(a, b) for n, w, a, b in top if n == 1 and w == _LENGTH])
            self.lists = _map(data, [(a, b) for n, w, a, b in top if n == 2 and w == _LENGTH])
        except _MalformedError as e:
            raise InvalidRecordError(
                f"Record of {len(data)} bytes is not a serialized tf.train.Example or SequenceExample ({e}); "
                "is this a TFRecord file of YouTube-8M records?",
                reason="not_an_example",
            ) from None

    def feature(self, name: str) -> _Feature | None:
        if name not in self.features:
            return None
        try:
            return _feature(self.data, *self.features[name])
        except _MalformedError as e:
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


SEGMENT_FIELDS = ("segment_start_times", "segment_labels", "segment_scores")


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
def _frame_prefix(size: int) -> bytes:
    """Wire bytes in front of each frame in a canonically encoded FeatureList of `size`-byte frames."""
    bytes_list_len = 1 + len(_varint(size)) + size  # BytesList { value: <size bytes> }
    feature_len = 1 + len(_varint(bytes_list_len)) + bytes_list_len  # Feature { bytes_list }
    return _F1 + _varint(feature_len) + _F1 + _varint(bytes_list_len) + _F1 + _varint(size)


def _scan_frames(message: _Message, name: str, size: int, video_id: str) -> tuple[int, np.ndarray | None]:
    """`(number of frames, uint8 [T, size] of all frames or None)` of a frame list.

    When every frame is canonically encoded (one bytes value of `size` bytes) the list has a fixed layout:
    one vectorised check of every frame's framing bytes proves it, and the frames are a view of the record's
    bytes. Otherwise only the frames are counted here and `_decode_frames` validates them one by one.
    """
    data = message.data
    start, stop = message.lists[name]
    prefix = _frame_prefix(size)
    stride = len(prefix) + size
    if (stop - start) % stride == 0:
        rows = np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start).reshape(-1, stride)
        # One comparison of bytes objects: a quarter of the time of numpy's array_equal on [T, 8].
        if rows[:, : len(prefix)].tobytes() == prefix * rows.shape[0]:
            return rows.shape[0], rows[:, len(prefix) :]
    try:
        return len(_messages(data, start, stop, 1)), None
    except _MalformedError as e:
        raise InvalidRecordError(
            f"{name} is not a valid protobuf FeatureList ({e})", reason="not_an_example", video_id=video_id
        ) from None


def _decode_frames(message: _Message, name: str, size: int, num_kept: int, video_id: str) -> np.ndarray:
    """The first `num_kept` frames of a list that is not canonically encoded, validated one by one."""
    data = message.data
    values = []
    for i, (a, b) in enumerate(_messages(data, *message.lists[name], 1)[:num_kept]):
        try:
            feat = _feature(data, a, b)
        except _MalformedError as e:
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
    data = _as_bytes(serialized)
    message = _Message(data)
    if "rgb" not in message.lists and "audio" not in message.lists:
        if "mean_rgb" in message.features or "mean_audio" in message.features:
            raise InvalidRecordError(
                "This is a video-level record (tf.train.Example with mean_rgb/mean_audio), not a frame-level "
                "one: use --input_format=video (input_format='video') for this data",
                reason="wrong_record_kind",
                video_id=_try_id(message),
            )
        if not message.features:
            raise InvalidRecordError(
                f"Record of {len(data)} bytes holds no features at all; not a YouTube-8M record",
                reason="not_an_example",
            )
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
    data = _as_bytes(serialized)
    message = _Message(data)
    if "mean_rgb" not in message.features and "mean_audio" not in message.features:
        if message.lists:
            raise InvalidRecordError(
                "This is a frame-level record (tf.train.SequenceExample with rgb/audio frames), not a "
                "video-level one: use --input_format=frame (input_format='frame') for this data",
                reason="wrong_record_kind",
                video_id=_try_id(message),
            )
        if not message.features:
            raise InvalidRecordError(
                f"Record of {len(data)} bytes holds no features at all; not a YouTube-8M record",
                reason="not_an_example",
            )
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


# --------------------------------------------------------------------------------------------------
# Writers: hand-encoded wire format
# --------------------------------------------------------------------------------------------------

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
        (id_feature, _bytes_feature([video_id.encode()])),
        ("labels", _int64_feature(_check_labels(labels))),
    ]
    if segments is not None:
        context_entries += _segment_entries(segments)
    context = _features(context_entries)

    rgb_len, rgb_parts = _frame_list_parts("rgb", rgb_q)
    audio_len, audio_parts = _frame_list_parts("audio", audio_q)
    return b"".join([_field(_F1, context), _F2, _varint(rgb_len + audio_len), *rgb_parts, *audio_parts])


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
            encode = _float_feature if name == "segment_scores" else _int64_feature
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
    features = _features(
        [
            (id_feature, _bytes_feature([video_id.encode()])),
            ("labels", _int64_feature(_check_labels(labels))),
            ("mean_rgb", _float_feature(mean_rgb)),
            ("mean_audio", _float_feature(mean_audio)),
        ]
    )
    return _field(_F1, features)


# --------------------------------------------------------------------------------------------------
# Label names
# --------------------------------------------------------------------------------------------------


def parse_label_names(text: str, *, source: str = "label names") -> dict[int, str]:
    """Class names from the text of a `label_id,label_name` CSV or of the dataset's `vocabulary.csv`.

    `vocabulary.csv` has the header `Index,TrainVideoCount,KnowledgeGraphId,Name,WikiUrl,Vertical1,...`
    and quoted fields that contain commas; both layouts are read with the csv module.

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


def read_label_names(path: str) -> dict[int, str]:
    """`parse_label_names` of a local or remote (gs://) file: what every `--label_names` flag reads.

    Raises:
        FileNotFoundError: the file does not exist or cannot be read (the message says what to pass).
        ValueError: the header has neither layout, or an id is not an integer.
    """
    try:
        text = read_text(path)
    except OSError as e:
        raise FileNotFoundError(
            f"cannot read label names from {path!r} ({e}); pass a 'label_id,label_name' CSV or the "
            "dataset's vocabulary.csv"
        ) from None
    return parse_label_names(text, source=path)
