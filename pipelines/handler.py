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
- with `segments=SegmentOptions(...)`, also scores every segment of the batch's videos (5-frame windows by
  default) in batched calls on the same worker, slicing the frames it already holds (to the model a
  segment is a short video), and keeps each segment's top classes (`ScoredBatch.segments`);
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
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from nextvlad.metrics import top_k as top_k_fn
from nextvlad.segments import SEGMENT_LENGTH, SEGMENT_STRIDE, check_window, segment_chunks, segment_inputs
from nextvlad.serving import (
    MODEL_FILE,
    PREPROCESSING_LAYER,
    SERVING_OUTPUTS,
    InvalidModelError,
    ModelInfo,
    describe_model,
    has_gpu,
    inspect_model,
    load_model,
    pad_batch,
    resolve_model_file,
)
from pipelines.transforms import ScoredBatch, SegmentScores

__all__ = [
    "InvalidModelError",
    "ModelInfo",
    "NeXtVLADModelHandler",
    "ScoringModel",
    "SegmentOptions",
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


def _reduced_precision(model: Any, *, policy: str | None = None) -> Any:
    """The same model computing in float16 (GPU) or bfloat16 (CPU), with float32 weights and outputs.

    `policy` names another Keras mixed policy (e.g. "mixed_bfloat16" on a GPU, for benchmarks).
    """
    import keras

    policy = policy or ("mixed_float16" if has_gpu() else "mixed_bfloat16")
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
            "GPU" if has_gpu() else "CPU",
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


@dataclasses.dataclass(frozen=True)
class SegmentOptions:
    """How the handler scores the segments of each video (`pipelines.score --segments`)."""

    length: int = SEGMENT_LENGTH  # frames per segment (the 2019 release rates 5)
    stride: int = SEGMENT_STRIDE  # frames between segment starts
    top_k: int = 20  # classes kept per segment
    classes: tuple[int, ...] = ()  # choose the top classes among these only (e.g. the rated ones); () all
    embeddings: bool = False  # also keep each segment's embedding
    batch_size: int = 512  # segments per model call

    def __post_init__(self) -> None:
        check_window(self.length, self.stride)
        if self.top_k < 1 or self.batch_size < 1:
            raise ValueError(f"top_k={self.top_k} and batch_size={self.batch_size} must be positive")
        if self.classes and self.top_k > len(self.classes):
            raise ValueError(
                f"top_k={self.top_k} is more than the {len(self.classes)} classes to choose from"
            )


def score_segments(model: ScoringModel, videos: Sequence[dict], options: SegmentOptions) -> SegmentScores:
    """Every segment of `videos`, scored in calls of `options.batch_size` and reduced to its top classes.

    Args:
        model: the loaded model.
        videos: parsed frame-level videos (their uint8 frames are sliced, not read again).
        options: window, classes and outputs.

    Returns:
        The segments in video order, then start order.
    """
    segments = segment_inputs(videos, length=options.length, stride=options.stride)
    classes = np.asarray(options.classes, dtype=np.int64)
    tops, scores, embeddings = [], [], []
    for part, rows in segment_chunks(segments.inputs, options.batch_size):
        outputs = model.score(part)
        predictions = outputs["predictions"][:rows]  # [n, C]
        if classes.size:
            columns, best = top_k_fn(predictions[:, classes], options.top_k)
            tops.append(classes[columns])
        else:
            columns, best = top_k_fn(predictions, options.top_k)
            tops.append(columns)
        scores.append(best)
        if options.embeddings:
            embeddings.append(outputs["embedding"][:rows])
    k = options.top_k if not classes.size else min(options.top_k, classes.size)
    return SegmentScores(
        video_index=segments.video_index,
        start_time=segments.start_time,
        top_classes=np.concatenate(tops).astype(np.int32) if tops else np.zeros((0, k), np.int32),
        top_scores=np.concatenate(scores).astype(np.float32) if scores else np.zeros((0, k), np.float32),
        embeddings=np.concatenate(embeddings) if options.embeddings and embeddings else None,
    )


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
        segments: also score every segment of each video (frame level only); None: videos only.

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
        segments: SegmentOptions | None = None,
    ) -> None:
        if input_format not in ("frame", "video"):
            raise ValueError(f"input_format={input_format!r}; expected 'frame' or 'video'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected a positive number of videos per batch")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")
        if model_copies is not None and model_copies < 1:
            raise ValueError(f"model_copies={model_copies}; expected a positive count")
        if segments is not None and input_format != "frame":
            raise ValueError("segments are windows of frames: segment scoring needs input_format='frame'")
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
        self._segments = segments

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
        started = time.perf_counter()
        outputs = model.score(pad_batch(batch, self._input_format, lengths=self._pad_lengths))
        Metrics.counter(METRICS_NAMESPACE, "batches").inc()
        segments = None
        if self._segments is not None:
            # Model time of each pass, so the run can report what segments cost per video.
            middle = time.perf_counter()
            segments = score_segments(model, batch, self._segments)
            ended = time.perf_counter()
            Metrics.counter(METRICS_NAMESPACE, "video_model_msecs").inc(round(1e3 * (middle - started)))
            Metrics.counter(METRICS_NAMESPACE, "segment_model_msecs").inc(round(1e3 * (ended - middle)))
            Metrics.counter(METRICS_NAMESPACE, "segments_scored").inc(int(segments.start_time.size))
        # One result per batch, not per video: rows are formatted a batch at a time (top-k over [B, C]).
        return [ScoredBatch(list(batch), outputs["predictions"], outputs["embedding"], segments)]

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
