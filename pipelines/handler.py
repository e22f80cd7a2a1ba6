"""Beam `ModelHandler` for NeXtVLAD models saved as `.keras` files.

`RunInference(KeyedModelHandler(NeXtVLADModelHandler(path)))` scores parsed videos. The handler:

- loads `model.keras` once per worker process in `load_model` (after `import nextvlad`, which registers
  the custom layers, with `safe_mode=True`); with `share_model_across_processes=True` one copy (or
  `model_copies` copies) serves every SDK process of a worker, which is what a GPU worker wants;
- batches exactly `batch_size` videos (Beam's `BatchElements` with min = max), and pads each batch only to
  its own longest video, so short videos cost little;
- returns numpy arrays (never framework tensors), one `PredictionResult` per video whose `inference` is
  `{"predictions": float32 [C], "embedding": float32 [E]}`;
- uses the GPU when the process sees one (TensorFlow memory growth on, so that several SDK processes can
  share the card), and optionally runs in reduced precision (`precision="mixed"`).

Beam's stock `TFModelHandlerNumpy` is not used: it imports `tensorflow_hub` and stacks fixed-shape arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "nextvlad"
MODEL_FILE = "model.keras"
PRECISIONS = ("float32", "mixed")
SERVING_OUTPUTS = ("predictions", "embedding")
FRAME_INPUTS = {"rgb": 1024, "audio": 128}  # feature size of each frame-level input
VIDEO_INPUTS = {"mean_rgb": 1024, "mean_audio": 128}


class InvalidModelError(ValueError):
    """The model path does not hold a NeXtVLAD scoring model (missing, unreadable or wrong kind)."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about a model before it starts."""

    path: str  # the resolved `.keras` file
    input_format: str  # "frame" (rgb/audio/num_frames inputs) or "video" (mean_rgb/mean_audio)
    num_classes: int  # C: length of `predictions`
    embedding_size: int  # E: length of `embedding`


def resolve_model_file(model: str) -> str:
    """The `.keras` file a `--model` argument refers to.

    Args:
        model: a `.keras` file or a model directory (as written by `trainer.train`) holding `model.keras`;
            local or any filesystem Beam knows (gs://).

    Returns:
        The path of the `.keras` file.

    Raises:
        InvalidModelError: nothing usable exists at that path (the message says what to pass).
    """
    if model.endswith(".keras"):
        if FileSystems.exists(model):
            return model
        raise InvalidModelError(
            f"Model file {model!r} does not exist; pass --model a trained model's .keras file or its "
            f"model directory (train one with `python -m trainer.train` or run `make demo`)"
        )
    candidate = FileSystems.join(model, MODEL_FILE) if model else MODEL_FILE
    if FileSystems.exists(candidate):
        return candidate
    what = "directory has no model.keras" if FileSystems.exists(model) else "path does not exist"
    raise InvalidModelError(
        f"No model at {model!r} (the {what}); pass --model a model directory containing {MODEL_FILE} or a "
        "path to a .keras file (train one with `python -m trainer.train` or run `make demo`)"
    )


def model_fingerprint(path: str) -> str:
    """Short sha256 of a model file (12 hex digits), read through Beam's filesystems."""
    digest = hashlib.sha256()
    with FileSystems.open(path) as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def default_model_version(model: str, model_file: str) -> str:
    """A traceable version string: the model directory (or file) name plus the file's short sha256."""
    name = os.path.basename(model.rstrip("/")) or MODEL_FILE
    return f"{name}@{model_fingerprint(model_file)}"


_local_copies: dict[str, str] = {}
_local_copies_lock = threading.Lock()


def _local_model_file(path: str) -> str:
    """Keras loads local files only reliably: copy a remote model (gs://...) once per process."""
    if "://" not in path:
        return path
    with _local_copies_lock:
        if path not in _local_copies:
            target = os.path.join(tempfile.mkdtemp(prefix="nextvlad-model-"), MODEL_FILE)
            with FileSystems.open(path) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            _local_copies[path] = target
        return _local_copies[path]


def enable_gpu_memory_growth() -> None:
    """Lets several processes share a GPU: TensorFlow allocates GPU memory as needed, not all up front.

    Must run before TensorFlow touches the GPU; later calls (or other Keras backends) are no-ops.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        # RuntimeError: the GPU was initialised already; its setting stays as it was.
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)


def _has_gpu() -> bool:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def _load_keras_model(path: str) -> Any:
    import keras

    import nextvlad  # noqa: F401  (registers the custom layers for deserialization)

    local = _local_model_file(path)
    try:
        return keras.saving.load_model(local, compile=False, safe_mode=True)
    except Exception as e:  # keras raises several types for a file that is not a Keras model
        raise InvalidModelError(
            f"Could not load {path!r} as a Keras model ({type(e).__name__}: {e}); pass the model.keras "
            "written by `python -m trainer.train`"
        ) from e


def _describe_model(model: Any, path: str) -> ModelInfo:
    """Checks that a loaded Keras model is a NeXtVLAD scoring model and reads its sizes."""
    outputs = model.output if isinstance(model.output, dict) else {}
    missing = [name for name in SERVING_OUTPUTS if name not in outputs]
    if missing:
        found = sorted(outputs) if outputs else [getattr(t, "name", "?") for t in model.outputs]
        raise InvalidModelError(
            f"{path!r} is not a NeXtVLAD scoring model: its outputs are {found}, expected a dict with "
            f"{list(SERVING_OUTPUTS)}; save `nextvlad.serving_model(model)` (what trainer.train writes)"
        )
    inputs = model.input if isinstance(model.input, dict) else {}
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    if set(shapes) == {*FRAME_INPUTS, "num_frames"}:
        input_format, sizes = "frame", FRAME_INPUTS
    elif set(shapes) == set(VIDEO_INPUTS):
        input_format, sizes = "video", VIDEO_INPUTS
    else:
        raise InvalidModelError(
            f"{path!r} is not a NeXtVLAD scoring model: its inputs are {sorted(shapes) or 'not named'}, "
            f"expected {sorted([*FRAME_INPUTS, 'num_frames'])} (frame level) or {sorted(VIDEO_INPUTS)} "
            "(video level)"
        )
    for name, size in sizes.items():
        if shapes[name][-1] != size:
            raise InvalidModelError(
                f"{path!r} expects {name} features of size {shapes[name][-1]}, but YouTube-8M records hold "
                f"{size}; this model was not built for YouTube-8M features"
            )
    return ModelInfo(
        path=path,
        input_format=input_format,
        num_classes=int(outputs["predictions"].shape[-1]),
        embedding_size=int(outputs["embedding"].shape[-1]),
    )


def inspect_model(model: str) -> ModelInfo:
    """Loads a model once to check it is a NeXtVLAD scoring model, before a pipeline starts.

    Args:
        model: a `.keras` file or a directory holding `model.keras` (local or gs://).

    Returns:
        The resolved file, input format, class count and embedding size.

    Raises:
        InvalidModelError: the model is missing, unreadable, or not a NeXtVLAD scoring model.
    """
    path = resolve_model_file(model)
    keras_model = _load_keras_model(path)
    try:
        return _describe_model(keras_model, path)
    finally:
        del keras_model


def _reduced_precision(model: Any) -> Any:
    """The same model computing in float16 (GPU) or bfloat16 (CPU), with float32 weights and outputs."""
    import keras

    policy = "mixed_float16" if _has_gpu() else "mixed_bfloat16"
    keep_float32 = set(SERVING_OUTPUTS) | {layer.name for layer in model.layers if not layer.weights}
    previous = keras.config.dtype_policy()

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name not in keep_float32:
            config["dtype"] = keras.DTypePolicy(policy)
        return layer.__class__.from_config(config)

    # Sub-layers that custom layers create in build() take the global policy.
    keras.config.set_dtype_policy(policy)
    try:
        mixed = keras.models.clone_model(model, clone_function=clone)
    finally:
        keras.config.set_dtype_policy(previous)
    mixed.set_weights(model.get_weights())
    return mixed


class ScoringModel:
    """A loaded NeXtVLAD model with one method, `score`, so it can also be shared across processes.

    Attributes:
        info: the model's `ModelInfo`.
        keras_model: the Keras model (serving outputs only).
    """

    def __init__(self, path: str, *, precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")
        enable_gpu_memory_growth()
        started = time.perf_counter()
        keras_model = _load_keras_model(path)
        self.info = _describe_model(keras_model, path)
        if precision == "mixed":
            keras_model = _reduced_precision(keras_model)
        self.keras_model = keras_model
        self.precision = precision
        self._predict = _predict_function(keras_model)
        logger.info(
            "loaded %s (%s level, %d classes, embedding %d, %s, %s) in %.1fs",
            path,
            self.info.input_format,
            self.info.num_classes,
            self.info.embedding_size,
            precision,
            "GPU" if _has_gpu() else "CPU",
            time.perf_counter() - started,
        )

    def score(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model on one padded batch.

        Args:
            inputs: the model's named inputs (see `pad_batch`).

        Returns:
            `predictions` float32 [B, C] and `embedding` float32 [B, E], as numpy arrays.
        """
        import keras

        outputs = self._predict(dict(inputs))
        return {name: np.asarray(keras.ops.convert_to_numpy(outputs[name])) for name in SERVING_OUTPUTS}


def _predict_function(keras_model: Any) -> Any:
    """The model's inference call, traced once for every batch and frame count on TensorFlow.

    `predict_on_batch` retraces its `tf.function` for each new input shape until its shapes relax, which
    costs a few tenths of a second per trace; a fully dynamic input signature traces once.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return keras_model.predict_on_batch
    import tensorflow as tf

    signature = {
        name: tf.TensorSpec((None, *tensor.shape[1:]), dtype=tensor.dtype, name=name)
        for name, tensor in keras_model.input.items()
    }

    @tf.function(input_signature=[signature], autograph=False)
    def predict(inputs):
        outputs = keras_model(inputs, training=False)
        return {name: outputs[name] for name in SERVING_OUTPUTS}

    return predict


def pad_batch(examples: Sequence[Mapping[str, Any]], input_format: str) -> dict[str, np.ndarray]:
    """Stacks parsed videos into the model's inputs, padding frames only to this batch's longest video.

    Args:
        examples: parsed records (`nextvlad.yt8m.parse_frame_example` / `parse_video_example` dicts).
        input_format: "frame" or "video".

    Returns:
        Frame level: `rgb` float32 [B, T, 1024], `audio` float32 [B, T, 128] (zeros after each video's
        frames), `num_frames` int32 [B], with T the longest video of the batch. Video level: `mean_rgb`
        float32 [B, 1024], `mean_audio` float32 [B, 128].
    """
    if input_format == "video":
        return {
            name: np.stack([e[name] for e in examples]).astype(np.float32, copy=False)
            for name in VIDEO_INPUTS
        }
    num_frames = np.array([e["num_frames"] for e in examples], dtype=np.int32)  # [B]
    longest = int(num_frames.max())
    batch: dict[str, np.ndarray] = {"num_frames": num_frames}
    for name, size in FRAME_INPUTS.items():
        padded = np.zeros((len(examples), longest, size), dtype=np.float32)  # [B, T, size]
        for i, example in enumerate(examples):
            padded[i, : num_frames[i]] = example[name]
        batch[name] = padded
    return batch


class NeXtVLADModelHandler(ModelHandler[dict, PredictionResult, ScoringModel]):
    """Scores parsed YouTube-8M videos with a NeXtVLAD `.keras` model.

    Args:
        model_uri: the `.keras` file (local or gs://); use `resolve_model_file` on a model directory.
        input_format: "frame" or "video"; must match the model's inputs (checked when loading).
        batch_size: videos per inference call; every batch has exactly this many videos except the
            last of a bundle.
        precision: "float32" (exact) or "mixed" (float16 on GPU, bfloat16 on CPU; faster on GPUs with
            tensor cores, scores agree to about 1e-3).
        share_model_across_processes: load one copy per worker machine and share it among its SDK
            processes (saves memory, and is what a single-GPU worker needs).
        model_copies: with sharing, how many copies to load per machine (e.g. one per GPU); implies sharing.

    Example:
        >>> handler = KeyedModelHandler(NeXtVLADModelHandler("model/model.keras", batch_size=64))
        >>> keyed_videos | RunInference(handler)  # (id, PredictionResult)
    """

    def __init__(
        self,
        model_uri: str,
        *,
        input_format: str = "frame",
        batch_size: int = 64,
        precision: str = "float32",
        share_model_across_processes: bool = False,
        model_copies: int | None = None,
    ) -> None:
        if input_format not in ("frame", "video"):
            raise ValueError(f"input_format={input_format!r}; expected 'frame' or 'video'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected a positive number of videos per batch")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")
        if model_copies is not None and model_copies < 1:
            raise ValueError(f"model_copies={model_copies}; expected a positive count")
        super().__init__(
            min_batch_size=batch_size,
            max_batch_size=batch_size,
            large_model=share_model_across_processes,
            model_copies=model_copies,
        )
        self._model_uri = model_uri
        self._input_format = input_format
        self._precision = precision

    def load_model(self) -> ScoringModel:
        model = ScoringModel(self._model_uri, precision=self._precision)
        if model.info.input_format != self._input_format:
            raise InvalidModelError(
                f"{self._model_uri!r} takes {model.info.input_format}-level inputs but the handler was set "
                f"up for {self._input_format}-level records; pass input_format={model.info.input_format!r}"
            )
        return model

    def run_inference(
        self,
        batch: Sequence[dict],
        model: ScoringModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        outputs = model.score(pad_batch(batch, self._input_format))
        Metrics.counter(METRICS_NAMESPACE, "batches").inc()
        predictions, embeddings = outputs["predictions"], outputs["embedding"]  # [B, C], [B, E]
        return [
            PredictionResult(
                example, {"predictions": predictions[i], "embedding": embeddings[i]}, self._model_uri
            )
            for i, example in enumerate(batch)
        ]

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        # The default pickles the whole batch only to measure it.
        return sum(v.nbytes for example in batch for v in example.values() if isinstance(v, np.ndarray))

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(f"NeXtVLADModelHandler takes no inference_args, got {sorted(inference_args)}")

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            self._model_uri = model_path
