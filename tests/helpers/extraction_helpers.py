"""A backbone whose features can be read by eye, and an identity PCA, for the extraction tests.

`tiny_backbone` averages each 8x8 block of a 32x32 frame (a 4 x 4 grid) and maps block i's red mean m
to feature i as `m / 127.5 - 1` (black -1, white +1); the other 2032 features are 0. With `identity_pca`
(mean 0, the first 1024 unit directions, eigenvalues 1 - 1e-4 so that whitening divides by exactly 1) a
record's rgb byte i is `quantize(feature i)`: 64 for a black block, 191 for a white one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nextvlad.extraction.clips import GRID
from nextvlad.extraction.pca import PCA, save_pca_dir

FEATURES = 2048


def tiny_backbone(path: Path) -> Path:
    import keras

    inputs = keras.Input((32, 32, 3), name="images")
    x = keras.layers.AveragePooling2D(8, name="blocks")(inputs)  # [B, 4, 4, 3]
    x = keras.layers.Flatten(name="flat")(x)  # [B, 48]: (row * 4 + col) * 3 + channel
    dense = keras.layers.Dense(FEATURES, name="readout")
    model = keras.Model(inputs, dense(x), name="tiny_backbone")
    kernel = np.zeros((48, FEATURES), np.float32)
    bias = np.zeros(FEATURES, np.float32)
    for block in range(GRID * GRID):
        kernel[block * 3, block] = 1 / 127.5
        bias[block] = -1.0
    dense.set_weights([kernel, bias])
    model.save(path)
    return path


def identity_pca(directory: Path) -> Path:
    eye = np.eye(FEATURES, dtype=np.float32)[:, :1024]
    save_pca_dir(
        PCA(np.zeros(FEATURES, np.float32), eye, np.full(1024, 1 - 1e-4, np.float32)), str(directory)
    )
    return directory


def block_codes(rgb_q: np.ndarray) -> list[int]:
    """The timestamp code each quantized frame shows (see `nextvlad.extraction.clips.timestamp_picture`)."""
    return [sum(1 << i for i in range(GRID * GRID) if row[i] > 127) for row in np.asarray(rgb_q)]


# The release's variables: name -> shape (vggish_slim.py; conv kernels HWIO, dense kernels [in, out]).
PUBLISHED = {
    "vggish/conv1": (3, 3, 1, 64),
    "vggish/conv2": (3, 3, 64, 128),
    "vggish/conv3/conv3_1": (3, 3, 128, 256),
    "vggish/conv3/conv3_2": (3, 3, 256, 256),
    "vggish/conv4/conv4_1": (3, 3, 256, 512),
    "vggish/conv4/conv4_2": (3, 3, 512, 512),
    "vggish/fc1/fc1_1": (12288, 4096),
    "vggish/fc1/fc1_2": (4096, 4096),
    "vggish/fc2": (4096, 128),
}


def write_vggish_checkpoint(prefix, *, scopes=tuple(PUBLISHED)):
    """A TensorFlow checkpoint with the published variable names and shapes, random values."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    values = {}
    for scope in scopes:
        shape = PUBLISHED[scope]
        scale = np.float32(np.sqrt(2.0 / np.prod(shape[:-1])))
        values[f"{scope}/weights"] = rng.standard_normal(shape, dtype=np.float32) * scale
        values[f"{scope}/biases"] = rng.standard_normal(shape[-1:], dtype=np.float32) * scale * 0.1
    names = sorted(values)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[values[n] for n in names],
    )
    return values


def write_audio_only(path: Path) -> Path:
    """An mp4 holding one AAC audio stream and no video stream."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
