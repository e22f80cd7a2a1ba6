"""The scoring path as it was before it read the wire format directly and kept frames uint8.

Kept for two uses only: `bench_pipeline_cost.py` measures the old path beside the new one, and the tests
check that `nextvlad.records` gives the same answers on every kind of record, good and bad. It needs
TensorFlow (for the `tf.train` protos) and returns dequantized float32 frames, as the old path did.

The old path, piece by piece: `parse_frame_example` (protobuf decode, re-encoding of the frame lists,
dequantization to float32: 4 bytes per feature), `pad_batch` (float32 padding, a second copy), and a model
that takes those float32 frames (`float_input_model`). `install_old_scoring_path` puts all three into the
scoring pipeline of the current process, so that `pipelines.score` runs the old path end to end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from nextvlad.records import (
    AUDIO_SIZE,
    MAX_FRAMES,
    NUM_CLASSES,
    RGB_SIZE,
    InvalidRecordError,
    dequantize,
    frame_prefix,
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


def _read_frames(feature_list: Any, num_kept: int, size: int, name: str, video_id: str) -> np.ndarray:
    """The first `num_kept` frames of a FeatureList as uint8 [num_kept, size], validated."""
    # Fast path: re-encode the list (one C call) and check the framing bytes of every frame at once.
    # When each frame's prefix is the canonical "one bytes value of `size` bytes" the layout is fixed,
    # so the frames are the remaining columns. Anything else takes the slow path for a precise error.
    prefix = frame_prefix(size)
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
    data = bytes(serialized)
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
    data = bytes(serialized)
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
# The rest of the old path: float padding, a float-input model, and putting them into the pipeline
# --------------------------------------------------------------------------------------------------


def pad_batch(
    examples: Sequence[Mapping[str, Any]], input_format: str, *, lengths: Sequence[int] = ()
) -> dict[str, np.ndarray]:
    """The old handler's padding: float32 frames [B, T, D] (zeros after each video), T the longest video
    (or the first of `lengths` that holds it, as `pipelines.handler.pad_batch` does)."""
    if input_format != "frame":
        raise ValueError("the old path is kept for frame-level records only")
    num_frames = np.array([e["num_frames"] for e in examples], dtype=np.int32)  # [B]
    longest = int(num_frames.max())
    longest = min((n for n in lengths if n >= longest), default=longest)
    batch: dict[str, np.ndarray] = {"num_frames": num_frames}
    for name, size in (("rgb", RGB_SIZE), ("audio", AUDIO_SIZE)):
        padded = np.zeros((len(examples), longest, size), dtype=np.float32)  # [B, T, size]
        for i, example in enumerate(examples):
            padded[i, : num_frames[i]] = example[name]
        batch[name] = padded
    return batch


def float_input_model(config: Any) -> Any:
    """The serving model of `config` as the old path built it: float32 dequantized frames in, no
    preprocessing layer. Outputs `predictions` and `embedding`, like `nextvlad.serving_model`."""
    import keras

    from nextvlad.layers import FrameMask
    from nextvlad.model import _branch

    inputs = {
        "rgb": keras.Input((None, config.rgb_size), dtype="float32", name="rgb"),
        "audio": keras.Input((None, config.audio_size), dtype="float32", name="audio"),
        "num_frames": keras.Input((), dtype="int32", name="num_frames"),
    }
    mask = FrameMask(name="frame_mask")(inputs["rgb"], inputs["num_frames"])
    logits, embedding = _branch(config, inputs, mask, prefix="")
    outputs = {
        "predictions": keras.layers.Activation("sigmoid", dtype="float32", name="predictions")(logits),
        "embedding": keras.layers.Activation("linear", dtype="float32", name="embedding")(embedding),
    }
    return keras.Model(inputs, outputs, name="float_input_model")


def install_old_scoring_path(config: Any) -> None:
    """Makes `pipelines.score` in this process parse, pad and score as the old path did.

    The pipeline checks still see the saved uint8 model (its inputs and outputs tell them the model's
    kind); the records are then parsed with the protobuf parser above, padded as float32, and scored
    by `float_input_model(config)` through the handler's own compiled function. Works with the
    in-process DirectRunner, whose workers share this process's modules.
    """
    import types

    from nextvlad import records
    from pipelines import handler, transforms

    model = float_input_model(config)
    compile_predict = handler._predict_function
    handler._predict_function = lambda _saved_model: compile_predict(model)
    handler.pad_batch = pad_batch

    def parse(serialized: bytes, *, max_frames: int | None = MAX_FRAMES, num_classes: int | None = None):
        # The old parser always checked labels; the scoring path keeps any label id.
        return parse_frame_example(
            serialized, max_frames=max_frames or MAX_FRAMES, num_classes=num_classes or 1 << 62
        )

    transforms.records = types.SimpleNamespace(**{**vars(records), "parse_frame_example": parse})
