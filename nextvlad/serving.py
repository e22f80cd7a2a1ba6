"""The serving contract shared by `trainer.evaluate`, `pipelines.score` and the demo.

A serving model is the `model.keras` that `trainer.train` writes: inputs as the records store them
(frame level `rgb` uint8 [B, T, 1024], `audio` uint8 [B, T, 128], `num_frames` int32 [B]; video level
`mean_rgb` float32 [B, 1024], `mean_audio` float32 [B, 128]), a `preprocessing` layer that owns
dequantization, the frame limit and reverse whitening, and the outputs `predictions` [B, C] and
`embedding` [B, E]. Everything a caller needs to know about a model is read from the model itself
(`ModelInfo`); nothing about preprocessing is passed again at evaluation or scoring time.

No TensorFlow here: local files go through `os`, remote ones (gs://) through Beam's filesystems.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nextvlad import records

MODEL_FILE = "model.keras"
PREPROCESSING_LAYER = "preprocessing"
SERVING_OUTPUTS = ("predictions", "embedding")
FRAME_INPUTS = {"rgb": records.RGB_SIZE, "audio": records.AUDIO_SIZE}  # + num_frames
VIDEO_INPUTS = {"mean_rgb": records.RGB_SIZE, "mean_audio": records.AUDIO_SIZE}


class InvalidModelError(ValueError):
    """The model path does not hold a usable NeXtVLAD serving model (missing, unreadable, wrong kind or
    saved under an older contract); the message says what to pass or run instead."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What evaluation and scoring need to know about a serving model, read from the model."""

    path: str  # the resolved `.keras` file
    input_format: str  # "frame" or "video"
    num_classes: int  # C: length of `predictions`
    embedding_size: int  # E: length of `embedding`
    max_frames: int | None  # frames the model keeps per video (None at video level)
    reverse_whitening: bool  # whether the model reverse-whitens rgb itself


def _exists(path: str) -> bool:
    if "://" not in path:
        return os.path.exists(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def resolve_model_file(model: str) -> str:
    """The `.keras` file a `--model` argument refers to: the file itself, or `model.keras` in a model_dir.

    Raises:
        InvalidModelError: nothing usable exists at that path (the message says what to pass).
    """
    if model.endswith(".keras"):
        if _exists(model):
            return model
        raise InvalidModelError(
            f"Model file {model!r} does not exist; pass --model a trained model's .keras file or its "
            "model directory (train one with `python -m trainer.train` or run `make demo`)"
        )
    candidate = f"{model.rstrip('/')}/{MODEL_FILE}" if model else MODEL_FILE
    if _exists(candidate):
        return candidate
    what = "directory has no model.keras" if model and _exists(model) else "path does not exist"
    raise InvalidModelError(
        f"No model at {model!r} (the {what}); pass --model a model directory containing {MODEL_FILE} "
        "(trainer.train writes it when training finishes) or a path to a .keras file"
    )


_local_copies: dict[str, str] = {}
_local_copies_lock = threading.Lock()


def local_model_file(path: str) -> str:
    """Keras loads local files only: a remote model (gs://...) is copied once per process."""
    if "://" not in path:
        return path
    with _local_copies_lock:
        if path not in _local_copies:
            target = os.path.join(tempfile.mkdtemp(prefix="nextvlad-model-"), MODEL_FILE)
            with open(target, "wb") as f:
                f.write(records.read_bytes(path))
            _local_copies[path] = target
        return _local_copies[path]


def load_model(path: str) -> Any:
    """Loads a `.keras` file (local or remote) with the project's layers registered, `safe_mode=True`."""
    import keras

    import nextvlad  # noqa: F401  (registers the custom layers the file refers to)

    try:
        return keras.saving.load_model(local_model_file(path), compile=False, safe_mode=True)
    except Exception as e:  # keras raises several types for a file that is not a Keras model
        raise InvalidModelError(
            f"Could not load {path!r} as a Keras model ({type(e).__name__}: {e}); pass the {MODEL_FILE} "
            "written by `python -m trainer.train`"
        ) from e


def has_gpu() -> bool:
    """Whether the Keras backend computes on a GPU (picks float16 over bfloat16 for mixed precision)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    return False


def _reexport_hint(path: str) -> str:
    folder = os.path.dirname(path) or "."
    return (
        f"re-export it once with `python -m trainer.export --model_dir {folder}` (add --pca_eigenvals "
        "yt8m_pca/eigenvals.npy if it was trained with reverse whitening and its train_config.json does not "
        "record it)"
    )


def describe_model(model: Any, path: str) -> ModelInfo:
    """Checks that a loaded Keras model follows the serving contract and reads its `ModelInfo`.

    Raises:
        InvalidModelError: wrong outputs or inputs, features of the wrong size, or a model saved before
            models took uint8 frames (the message gives the command that re-exports it).
    """
    try:
        outputs = model.output if isinstance(model.output, dict) else {}
    except (AttributeError, ValueError):  # e.g. a Sequential model that was never called
        outputs = {}
    missing = [name for name in SERVING_OUTPUTS if name not in outputs]
    if missing:
        found = (
            sorted(outputs) if outputs else [getattr(t, "name", "?") for t in getattr(model, "outputs", [])]
        )
        raise InvalidModelError(
            f"{path!r} is not a NeXtVLAD serving model: its outputs are {found}, expected a dict with "
            f"{list(SERVING_OUTPUTS)}; save `nextvlad.serving_model(model)` (what trainer.train writes)"
        )
    inputs = model.input if isinstance(model.input, dict) else {}
    if set(inputs) == {*FRAME_INPUTS, "num_frames"}:
        input_format, sizes = "frame", FRAME_INPUTS
    elif set(inputs) == set(VIDEO_INPUTS):
        input_format, sizes = "video", VIDEO_INPUTS
    else:
        raise InvalidModelError(
            f"{path!r} is not a NeXtVLAD serving model: its inputs are {sorted(inputs) or 'not named'}, "
            f"expected {sorted([*FRAME_INPUTS, 'num_frames'])} (frame level) or {sorted(VIDEO_INPUTS)} "
            "(video level)"
        )
    for name, size in sizes.items():
        if inputs[name].shape[-1] != size:
            raise InvalidModelError(
                f"{path!r} expects {name} features of size {inputs[name].shape[-1]}, but YouTube-8M records "
                f"hold {size}; this model was not built for YouTube-8M features"
            )
    layer = next((lay for lay in model.layers if lay.name == PREPROCESSING_LAYER), None)
    old_frames = input_format == "frame" and str(inputs["rgb"].dtype) != "uint8"
    if layer is None or old_frames:
        raise InvalidModelError(
            f"{path!r} was saved before models owned their preprocessing (it takes "
            f"{inputs['rgb'].dtype if input_format == 'frame' else 'mean features'} without a "
            f"'{PREPROCESSING_LAYER}' layer, so how it was trained cannot be read from it); "
            + _reexport_hint(path)
        )
    # The layer's attributes, not `get_config()`: Keras's serializer imports TensorFlow when it is
    # installed, whatever the backend.
    return ModelInfo(
        path=path,
        input_format=input_format,
        num_classes=int(outputs["predictions"].shape[-1]),
        embedding_size=int(outputs["embedding"].shape[-1]),
        max_frames=int(layer.max_frames) if input_format == "frame" else None,
        reverse_whitening=bool(layer.reverse_whitening),
    )


def inspect_model(model: str) -> ModelInfo:
    """Resolves, loads and describes a model once, before a job starts (see `describe_model`)."""
    path = resolve_model_file(model)
    keras_model = load_model(path)
    try:
        return describe_model(keras_model, path)
    finally:
        del keras_model


def pad_batch(
    examples: Sequence[Mapping[str, Any]], input_format: str, *, lengths: Sequence[int] = ()
) -> dict[str, np.ndarray]:
    """Stacks parsed videos into a serving model's inputs, padding frames only as far as needed.

    Args:
        examples: parsed records (`nextvlad.records.parse_frame_example` / `parse_video_example` dicts).
        input_format: "frame" or "video".
        lengths: frame counts to pad up to: T is the smallest of them that holds the longest video (the
            longest video itself when none does). With a few fixed lengths, compiled backends (JAX,
            PyTorch) see a few input shapes instead of one per batch.

    Returns:
        Frame level: `rgb` uint8 [B, T, 1024], `audio` uint8 [B, T, 128] (as stored, zeros after each video's
        frames), `num_frames` int32 [B]. Video level: `mean_rgb` float32 [B, 1024], `mean_audio` float32
        [B, 128].
    """
    if input_format == "video":
        return {
            name: np.stack([e[name] for e in examples]).astype(np.float32, copy=False)
            for name in VIDEO_INPUTS
        }
    num_frames = np.array([e["num_frames"] for e in examples], dtype=np.int32)  # [B]
    longest = int(num_frames.max())
    longest = min((n for n in lengths if n >= longest), default=longest)
    batch: dict[str, np.ndarray] = {"num_frames": num_frames}
    for name, size in FRAME_INPUTS.items():
        padded = np.zeros((len(examples), longest, size), dtype=np.uint8)  # [B, T, size]
        for i, example in enumerate(examples):
            padded[i, : num_frames[i]] = example[name]
        batch[name] = padded
    return batch


def check_first_record(serialized: bytes, info: ModelInfo, *, source: str) -> str | None:
    """Fails fast when a data set's first record is not what the model takes.

    Args:
        serialized: the first record of the data.
        info: the model.
        source: the file or pattern it came from, for messages.

    Returns:
        The id feature the records use (`"id"`, or the 2017 release's `"video_id"`), for the run's log;
        None when the record has neither (the record itself will be reported as a dead letter or error).

    Raises:
        ValueError: the record is of the other kind (frame vs video level) than the model takes.
    """
    parse = records.parse_frame_example if info.input_format == "frame" else records.parse_video_example
    try:
        parse(serialized, num_classes=None)
    except records.InvalidRecordError as e:
        if e.reason == "wrong_record_kind":
            other = "video" if info.input_format == "frame" else "frame"
            inputs = "rgb, audio, num_frames" if info.input_format == "frame" else "mean_rgb, mean_audio"
            level = info.input_format
            raise ValueError(
                f"{source} holds {other}-level records but the model {info.path} takes {level}-level "
                f"inputs ({inputs}); use a {other}-level model for this data, or pass {level}-level records"
            ) from None
    return records.id_feature(serialized)


def describe_id_layout(id_feature: str | None) -> str:
    """One log phrase for the record layout an id feature implies."""
    if id_feature == "video_id":
        return "2017 layout (id in 'video_id')"
    if id_feature == "id":
        return "2018+ layout (id in 'id')"
    return "no id feature in the first record"
