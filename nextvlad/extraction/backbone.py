"""Image backbones that turn RGB frames into one feature vector each.

Three kinds, chosen by `BackboneSpec.name`:

- `inception_v3` (default): Keras's Inception-v3 without its classifier, average-pooled (2048-d), the
  network family YouTube-8M used; input scaled to [-1, 1]. `weights="imagenet"` lets Keras download its
  ImageNet weights on first use and cache them under `$KERAS_HOME/models` (default `~/.keras/models`,
  `inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`, checked against its hash); a path loads
  that weights file instead; `"none"` builds the same network with seeded random weights (offline
  demos and tests: features then carry no ImageNet knowledge).
- a `.keras` file: any Keras model from uint8-range RGB images `[B, H, W, 3]` (0..255, as float) to
  `[B, D]` features (or a feature map, averaged over its spatial axes); it does its own preprocessing.
- anything else: a keras-hub preset name (e.g. `resnet_50_imagenet`) or a local preset folder, loaded with
  `keras_hub.models.Backbone.from_preset` and its `ImageConverter`; the output is averaged over its
  spatial (or token) axes. Needs `pip install keras-hub` (the `hub` extra).

Every backbone computes features of fixed-size frame chunks (the last one padded), so TensorFlow traces
its graph once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "inception_v3"
APPLICATIONS = {"inception_v3": 299}  # built-in backbones and their native input size
WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
PRECISIONS = ("float32", "mixed")


class BackboneError(ValueError):
    """The backbone cannot be built or loaded; the message says what to pass instead."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Which image network to run, and with which weights."""

    name: str = DEFAULT_BACKBONE  # inception_v3 | path/to/model.keras | keras-hub preset (name or folder)
    weights: str = "imagenet"  # inception_v3 / presets: imagenet (pretrained) | none (seeded random) | path
    seed: int = 0  # random weights' seed (weights="none")
    image_size: int | None = None  # square input side; None: the backbone's own (299 for inception_v3)

    @property
    def kind(self) -> str:
        if self.name in APPLICATIONS:
            return "application"
        if self.name.endswith(".keras"):
            return "file"
        return "hub"

    def describe(self) -> dict[str, Any]:
        """What goes into the output's metadata (and the log)."""
        weights = self.weights
        if self.kind == "file":
            weights = "from the .keras file"
        elif weights == "none":
            weights = f"none: seeded random weights (seed {self.seed}), not pretrained"
        return {"backbone": self.name, "weights": weights, "image_size": self.image_size}


class Backbone:
    """A built backbone: `features(images)` → float32 [N, D].

    Attributes:
        spec: what was asked for.
        image_size: (height, width) of the frames it takes.
        feature_dim: D.
    """

    def __init__(self, spec: BackboneSpec, *, precision: str = "float32", chunk_size: int = 32) -> None:
        import keras

        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")
        self.spec = spec
        self.chunk_size = chunk_size
        previous = keras.config.dtype_policy()
        if precision == "mixed":
            keras.config.set_dtype_policy(_reduced_policy())
        try:
            self.model = _build(spec)
        finally:
            keras.config.set_dtype_policy(previous)
        shape = self.model.input_shape
        self.image_size = (int(shape[1]), int(shape[2]))
        self.feature_dim = int(self.model.output_shape[-1])
        logger.info(
            "backbone %s: %dx%d frames -> %d-d features, weights: %s, %s",
            spec.name,
            self.image_size[0],
            self.image_size[1],
            self.feature_dim,
            spec.describe()["weights"],
            precision,
        )

    def features(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB frames → float32 [N, D], in chunks of `chunk_size` frames."""
        images = np.asarray(images)
        count = images.shape[0]
        out = np.empty((count, self.feature_dim), dtype=np.float32)
        for start in range(0, count, self.chunk_size):
            chunk = images[start : start + self.chunk_size].astype(np.float32)
            real = chunk.shape[0]
            if real < self.chunk_size:  # one input shape: one trace
                chunk = np.concatenate(
                    [chunk, np.zeros((self.chunk_size - real, *chunk.shape[1:]), np.float32)]
                )
            result = self.model.predict_on_batch(chunk)
            out[start : start + real] = np.asarray(result, dtype=np.float32)[:real]
        return out


def _reduced_policy() -> str:
    """float16 on a GPU (tensor cores), bfloat16 on a CPU."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "mixed_float16"
    return "mixed_bfloat16"


def _pooled(keras: Any, inputs: Any, outputs: Any, name: str) -> Any:
    """Averages a feature map [B, ..., C] over every axis but the batch and the channels."""
    if len(outputs.shape) > 2:
        axes = list(range(1, len(outputs.shape) - 1))
        outputs = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=axes), name="average_pool")(outputs)
    outputs = keras.layers.Activation("linear", dtype="float32", name="float32_features")(outputs)
    return keras.Model(inputs, outputs, name=name)


def _build(spec: BackboneSpec) -> Any:
    import keras

    if (
        spec.weights not in ("imagenet", "none")
        and spec.kind == "application"
        and not os.path.exists(spec.weights)
    ):
        raise BackboneError(
            f"--weights {spec.weights!r}: no such file; pass imagenet, none, or the path of a local copy of "
            f"{WEIGHTS_FILE}"
        )
    if spec.weights == "none":
        keras.utils.set_random_seed(spec.seed)
    if spec.kind == "application":
        return _inception_v3(keras, spec)
    if spec.kind == "file":
        return _keras_file(keras, spec)
    return _hub(keras, spec)


def _inception_v3(keras: Any, spec: BackboneSpec) -> Any:
    size = spec.image_size or APPLICATIONS["inception_v3"]
    if size < 75:
        raise BackboneError(f"--image_size {size}: Inception-v3 needs frames of at least 75x75 pixels")
    weights = None if spec.weights == "none" else spec.weights
    inputs = keras.Input((size, size, 3), name="images")
    try:
        base = keras.applications.InceptionV3(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg"
        )
    except Exception as e:
        if spec.weights != "imagenet":
            raise BackboneError(f"cannot load Inception-v3 weights from {spec.weights!r}: {e}") from None
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        cache = os.path.join(home, "models", WEIGHTS_FILE)
        raise BackboneError(
            f"cannot get Inception-v3's ImageNet weights ({type(e).__name__}: {e}). Keras downloads them on "
            f"first use and caches them at {cache}; this machine may be offline. Copy that file there (or "
            "pass --weights PATH to a local copy), or pass --weights none for seeded random weights"
        ) from None
    # Inception's own preprocessing: [0, 255] -> [-1, 1].
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inputs)
    return _pooled(keras, inputs, base(x), "inception_v3_features")


def _keras_file(keras: Any, spec: BackboneSpec) -> Any:
    from nextvlad.serving import load_model

    try:
        model = load_model(spec.name)
    except Exception as e:
        raise BackboneError(f"cannot load the backbone {spec.name!r}: {e}") from None
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise BackboneError(
            f"{spec.name}: the backbone's input is {shape}; expected RGB images [batch, height, width, 3] "
            "of a fixed size"
        )
    if spec.image_size is not None and spec.image_size != shape[1]:
        raise BackboneError(
            f"--image_size {spec.image_size}, but {spec.name} takes {shape[1]}x{shape[2]} frames"
        )
    if len(model.output_shape) < 2:
        raise BackboneError(f"{spec.name}: output {model.output_shape}; expected [batch, features]")
    inputs = keras.Input(tuple(shape[1:]), name="images")
    return _pooled(keras, inputs, model(inputs), "file_features")


def _hub(keras: Any, spec: BackboneSpec) -> Any:
    try:
        import keras_hub
    except ImportError:
        raise BackboneError(
            f"--backbone {spec.name!r} is not inception_v3 or a .keras file, so it is read as a keras-hub "
            "preset, but keras-hub is not installed: pip install 'nextvlad[hub]'"
        ) from None
    try:
        backbone = keras_hub.models.Backbone.from_preset(spec.name, load_weights=spec.weights != "none")
        converter = keras_hub.layers.ImageConverter.from_preset(spec.name)
    except Exception as e:
        raise BackboneError(
            f"cannot load the keras-hub preset {spec.name!r} ({type(e).__name__}: {e}). Presets are "
            "downloaded on first use: on an offline machine, save the preset to a folder elsewhere "
            "(backbone.save_to_preset(DIR) and image_converter.save_to_preset(DIR)) and pass that folder"
        ) from None
    size = spec.image_size or (converter.image_size[0] if converter.image_size else 224)
    converter.image_size = (size, size)
    inputs = keras.Input((size, size, 3), name="images")
    return _pooled(keras, inputs, backbone(converter(inputs)), f"{backbone.name}_features")
