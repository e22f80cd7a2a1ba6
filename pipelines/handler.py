"""Beam `ModelHandler` for NeXtVLAD models saved as `.keras` files.

`RunInference(NeXtVLADModelHandler(path))` scores parsed videos (`pipelines.transforms.ParseRecords`
output: uint8 frames as stored; the model dequantizes them itself). The handler:

- loads `model.keras` once per worker process in `load_model` (after `import nextvlad`, which registers
  the custom layers, with `safe_mode=True`); with `share_model_across_processes=True` one copy (or
  `model_copies` copies) serves every SDK process of a worker, which is what a GPU worker wants;
- batches exactly `batch_size` videos (Beam's `BatchElements` with min = max), and pads each batch only to
  its own longest video, so short videos cost little;
- gets batches of similar lengths when `pipelines.transforms.BucketByLength` orders the videos before it;
- returns one `ScoredBatch` per batch (the videos, `predictions` float32 [B, C] and `embedding` float32
  [B, E] as numpy arrays), so that rows are formatted a batch at a time;
- uses the GPU when the process sees one (TensorFlow memory growth on, so that several SDK processes can
  share the card), and optionally runs in reduced precision (`precision="mixed"`).

Beam's stock `TFModelHandlerNumpy` is not used: it imports `tensorflow_hub` and stacks fixed-shape arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from nextvlad.serving import (
    MODEL_FILE,
    PREPROCESSING_LAYER,
    SERVING_OUTPUTS,
    InvalidModelError,
    ModelInfo,
    describe_model,
    inspect_model,
    load_model,
    pad_batch,
    resolve_model_file,
)
from pipelines.transforms import ScoredBatch

__all__ = [
    "InvalidModelError",
    "ModelInfo",
    "NeXtVLADModelHandler",
    "ScoringModel",
    "default_model_version",
    "inspect_model",
    "pad_batch",
    "resolve_model_file",
]

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "nextvlad"
PRECISIONS = ("float32", "mixed")


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
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() == "gpu"
    return False


def _reduced_precision(model: Any, *, policy: str | None = None) -> Any:
    """The same model computing in float16 (GPU) or bfloat16 (CPU), with float32 weights and outputs.

    `policy` names another Keras mixed policy (e.g. "mixed_bfloat16" on a GPU, for benchmarks).
    """
    import keras

    policy = policy or ("mixed_float16" if _has_gpu() else "mixed_bfloat16")
    # Preprocessing (dequantization, reverse whitening) stays in float32: its inputs are exact there.
    keep_float32 = {*SERVING_OUTPUTS, PREPROCESSING_LAYER} | {
        layer.name for layer in model.layers if not layer.weights
    }
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
        keras_model = load_model(path)
        self.info = describe_model(keras_model, path)
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


class NeXtVLADModelHandler(ModelHandler[dict, ScoredBatch, ScoringModel]):
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
        pad_lengths: frame counts each batch is padded up to (see `pad_batch`): the `BucketByLength`
            boundaries when the pipeline buckets videos by length; empty: each batch's longest video.

    Example:
        >>> videos | RunInference(NeXtVLADModelHandler("model/model.keras", batch_size=64))  # ScoredBatch
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
        pad_lengths: Sequence[int] = (),
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
        self._pad_lengths = sorted(int(n) for n in pad_lengths)

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
    ) -> Iterable[ScoredBatch]:
        outputs = model.score(pad_batch(batch, self._input_format, lengths=self._pad_lengths))
        Metrics.counter(METRICS_NAMESPACE, "batches").inc()
        # One result per batch, not per video: rows are formatted a batch at a time (top-k over [B, C]).
        return [ScoredBatch(list(batch), outputs["predictions"], outputs["embedding"])]

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
