"""Small numerical helpers shared by the pooling layers."""

from keras import ops

# tf.nn.l2_normalize's floor on the squared norm: an all-zero cluster stays zero instead of NaN.
_SQUARED_NORM_FLOOR = 1e-12


def intra_normalize(vlad):
    """L2-normalises `[B, D, K]` VLAD descriptors per cluster, i.e. over the D axis."""
    squared = ops.sum(ops.square(vlad), axis=1, keepdims=True)  # [B, 1, K]
    return vlad * ops.rsqrt(ops.maximum(squared, _SQUARED_NORM_FLOOR))
