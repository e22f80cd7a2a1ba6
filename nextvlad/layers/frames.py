"""Frame masking and masked mean pooling: the glue between `num_frames` and the pooling layers."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="nextvlad")
class FrameMask(keras.layers.Layer):
    """Turns per-video frame counts into a `[B, T]` mask for a batch of padded frames.

    Call arguments:
        frames: float tensor `[B, T, N]` (only its first two dimensions are used).
        num_frames: int tensor `[B]`: the number of real frames of each video.

    Example:
    >>> FrameMask()(np.zeros((2, 3, 4)), np.array([1, 3]))
    [[True, False, False], [True, True, True]]
    """

    def call(self, frames, num_frames):
        steps = ops.arange(ops.shape(frames)[1], dtype="int32")  # [T]
        return steps[None, :] < ops.cast(ops.reshape(num_frames, (-1, 1)), "int32")  # [B, T]

    def compute_output_spec(self, frames, num_frames):
        return keras.KerasTensor(frames.shape[:2], dtype="bool")


@keras.saving.register_keras_serializable(package="nextvlad")
class MaskedMeanPooling(keras.layers.Layer):
    """Averages frame features over the real frames of each video.

    Call arguments:
        inputs: float tensor `[B, T, N]`.
        mask: bool tensor `[B, T]`, True for real frames.

    Example:
    >>> MaskedMeanPooling()(np.ones((1, 3, 2)), mask=np.array([[True, True, False]])).shape
    (1, 2)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.mean(inputs, axis=1)
        weights = ops.cast(mask, inputs.dtype)[..., None]  # [B, T, 1]
        total = ops.sum(inputs * weights, axis=1)  # [B, N]
        # A video with no frames gets zeros rather than NaN.
        return total / ops.maximum(ops.sum(weights, axis=1), 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])
