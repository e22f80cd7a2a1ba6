"""Squeeze-and-excitation context gating of the video-level embedding."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="nextvlad")
class ContextGating(keras.layers.Layer):
    """Re-weights each feature by a gate computed from the whole vector (SE block).

    `gates = sigmoid(W2 · relu(BN(W1 · x)))`, `W1: [H, H/r]`, `W2: [H/r, H]`, no biases;
    returns `x * gates`. The bottleneck keeps the gate cheap (2H²/r weights).

    Args:
        reduction: r, the bottleneck reduction factor (H must be divisible by it).
        **kwargs: standard layer arguments.

    Call arguments:
        inputs: float tensor `[B, H]`.
        training: whether BatchNormalization uses batch statistics.

    Example:
    >>> ContextGating(reduction=4)(np.ones((2, 16))).shape
    (2, 16)

    Reference:
        Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018; Miech et al., "Learnable pooling
        with Context Gating for video classification", arXiv:1706.06905.
    """

    def __init__(self, reduction: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.reduction = int(reduction)

    def build(self, input_shape):
        size = input_shape[-1]
        if size % self.reduction:
            raise ValueError(f"ContextGating: size {size} is not divisible by reduction={self.reduction}")
        self.squeeze = keras.layers.Dense(
            size // self.reduction, use_bias=False, name="squeeze", dtype=self.dtype_policy
        )
        self.squeeze_bn = keras.layers.BatchNormalization(name="squeeze_bn", dtype=self.dtype_policy)
        self.excite = keras.layers.Dense(size, use_bias=False, name="excite", dtype=self.dtype_policy)
        self.squeeze.build(input_shape)
        self.squeeze_bn.build((input_shape[0], size // self.reduction))
        self.excite.build((input_shape[0], size // self.reduction))

    def call(self, inputs, training=None):
        gates = ops.relu(self.squeeze_bn(self.squeeze(inputs), training=training))  # [B, H/r]
        gates = ops.sigmoid(self.excite(gates))  # [B, H]
        return inputs * gates

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(reduction=self.reduction)
        return config
