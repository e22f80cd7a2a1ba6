"""VGGish in Keras 3, loaded from the published TensorFlow checkpoint, and its PCA post-processor.

VGGish (Hershey et al., "CNN Architectures for Large-Scale Audio Classification", ICASSP 2017) is the
audio network behind YouTube-8M's audio features. Its release (tensorflow/models, `research/audioset/vggish`)
publishes two files, which the user downloads and passes by path:

- `vggish_model.ckpt`: a TensorFlow checkpoint whose variables are `vggish/conv1/weights`
  [3, 3, 1, 64], `vggish/conv2/...`, `vggish/conv3/conv3_{1,2}/...`, `vggish/conv4/conv4_{1,2}/...`,
  `vggish/fc1/fc1_{1,2}/...` and `vggish/fc2/...`, each with `weights` and `biases`;
- `vggish_pca_params.npz`: `pca_eigen_vectors` [128, 128] and `pca_means` [128, 1], the PCA +
  whitening that maps an embedding e to `M (e − μ)`, which is then quantized to uint8 over [-2, 2].

Network (the release's `vggish_slim.py`): input [96, 64] log-mel patch → conv 3×3 64 → maxpool 2 → conv
128 → maxpool → 2 × conv 256 → maxpool → 2 × conv 512 → maxpool (all ReLU, SAME padding, stride-2
2×2 pools) → flatten (6·4·512 = 12288, row-major H, W, C) → 2 × dense 4096 ReLU → dense 128 (linear).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from typing import Any

import numpy as np

from nextvlad.extraction.mel import NUM_MEL_BINS, PATCH_FRAMES
from nextvlad.files import read_bytes

logger = logging.getLogger(__name__)

EMBEDDING_SIZE = 128
CHECKPOINT_URL = "https://storage.googleapis.com/audioset/vggish_model.ckpt"
PCA_PARAMS_URL = "https://storage.googleapis.com/audioset/vggish_pca_params.npz"

# Keras layer name -> checkpoint scope, in network order; conv layers are 3x3, ReLU.
CONV_LAYERS = {
    "conv1": ("vggish/conv1", 64),
    "conv2": ("vggish/conv2", 128),
    "conv3_1": ("vggish/conv3/conv3_1", 256),
    "conv3_2": ("vggish/conv3/conv3_2", 256),
    "conv4_1": ("vggish/conv4/conv4_1", 512),
    "conv4_2": ("vggish/conv4/conv4_2", 512),
}
DENSE_LAYERS = {
    "fc1_1": ("vggish/fc1/fc1_1", 4096),
    "fc1_2": ("vggish/fc1/fc1_2", 4096),
    "fc2": ("vggish/fc2", EMBEDDING_SIZE),
}
POOL_AFTER = ("conv1", "conv2", "conv3_2", "conv4_2")


class VGGishError(ValueError):
    """The VGGish files given cannot be used; the message names the file and what to pass."""


def build_vggish(*, name: str = "vggish") -> Any:
    """The VGGish network, untrained: `[B, 96, 64]` log-mel patches → `[B, 128]` embeddings."""
    import keras

    inputs = keras.Input((PATCH_FRAMES, NUM_MEL_BINS), name="log_mel")
    x = keras.layers.Reshape((PATCH_FRAMES, NUM_MEL_BINS, 1), name="add_channel")(inputs)
    for layer, (_, filters) in CONV_LAYERS.items():
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=layer)(x)
        if layer in POOL_AFTER:
            x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool_{layer}")(x)
    x = keras.layers.Flatten(name="flatten")(x)  # [B, 12288]
    for layer, (_, units) in DENSE_LAYERS.items():
        activation = None if layer == "fc2" else "relu"
        x = keras.layers.Dense(units, activation=activation, name=layer)(x)
    return keras.Model(inputs, x, name=name)


def _local_checkpoint(path: str, workdir: str) -> str:
    """A checkpoint prefix TensorFlow can read: remote files (gs://) are copied next to each other first."""
    if "://" not in path:
        return path
    from apache_beam.io.filesystems import FileSystems

    found = [m.path for m in FileSystems.match([path + "*"])[0].metadata_list]
    if not found:
        raise VGGishError(f"--vggish_checkpoint {path!r} matches no file")
    prefix = os.path.join(workdir, os.path.basename(path))
    for remote in found:
        with open(os.path.join(workdir, os.path.basename(remote)), "wb") as f:
            f.write(read_bytes(remote))
    return prefix


def load_vggish(checkpoint: str) -> Any:
    """VGGish with the weights of a checkpoint in the published layout (local or gs://).

    Raises:
        VGGishError: the file is not a TensorFlow checkpoint, or a variable is missing or mis-shaped.
    """
    import tensorflow as tf

    model = build_vggish()
    with tempfile.TemporaryDirectory() as workdir:
        prefix = _local_checkpoint(checkpoint, workdir)
        try:
            reader = tf.train.load_checkpoint(prefix)
        except Exception as e:
            raise VGGishError(
                f"cannot read the VGGish checkpoint {checkpoint!r} ({type(e).__name__}: {e}); pass the "
                f"published vggish_model.ckpt ({CHECKPOINT_URL})"
            ) from None
        shapes = reader.get_variable_to_shape_map()
        for layer, (scope, _) in {**CONV_LAYERS, **DENSE_LAYERS}.items():
            target = model.get_layer(layer)
            values = []
            for part, variable in (("weights", target.kernel), ("biases", target.bias)):
                key = f"{scope}/{part}"
                if key not in shapes:
                    raise VGGishError(
                        f"{checkpoint!r} has no variable {key!r}: not a VGGish checkpoint (it holds "
                        f"{sorted(shapes)[:4]}...); pass the published vggish_model.ckpt ({CHECKPOINT_URL})"
                    )
                if tuple(shapes[key]) != tuple(variable.shape):
                    raise VGGishError(
                        f"{checkpoint!r}: {key} has shape {tuple(shapes[key])}, VGGish needs "
                        f"{tuple(variable.shape)}"
                    )
                values.append(reader.get_tensor(key))
            target.set_weights(values)
    logger.info("loaded VGGish weights from %s", checkpoint)
    return model


class VGGishPCA:
    """The release's post-processor: `M (e − μ)` for each embedding e, before quantization.

    Args:
        path: `vggish_pca_params.npz` (local or gs://) with `pca_eigen_vectors` [128, 128] and `pca_means`.
    """

    def __init__(self, path: str) -> None:
        try:
            params = np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
            matrix = np.asarray(params["pca_eigen_vectors"], dtype=np.float32)
            means = np.asarray(params["pca_means"], dtype=np.float32).reshape(-1)
        except (OSError, ValueError, KeyError) as e:
            raise VGGishError(
                f"cannot read VGGish PCA parameters from {path!r} ({type(e).__name__}: {e}); pass the "
                f"published vggish_pca_params.npz ({PCA_PARAMS_URL})"
            ) from None
        if matrix.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE) or means.shape != (EMBEDDING_SIZE,):
            raise VGGishError(
                f"{path!r}: pca_eigen_vectors {matrix.shape} and pca_means {means.shape}; VGGish's are "
                f"({EMBEDDING_SIZE}, {EMBEDDING_SIZE}) and ({EMBEDDING_SIZE}, 1)"
            )
        self.matrix, self.means = matrix, means

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """float32 [N, 128] embeddings → float32 [N, 128] whitened features (quantize them next)."""
        return (np.asarray(embeddings, dtype=np.float32) - self.means) @ self.matrix.T
