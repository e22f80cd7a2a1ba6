"""The NeXtVLAD pooling layer (Lin et al., ECCV-W 2018)."""

from __future__ import annotations

import keras
from keras import ops

from nextvlad.layers._util import intra_normalize


@keras.saving.register_keras_serializable(package="nextvlad")
class NeXtVLAD(keras.layers.Layer):
    """Aggregates a variable number of frame features into one fixed-size vector.

    Each frame of N features is expanded to λN, split into G groups of λN/G features, and every
    group is softly assigned to K clusters; the assignment is weighted by a per-(frame, group)
    attention. The residuals to the K cluster anchors are summed over frames and groups,
    L2-normalised per cluster and batch-normalised. Output size: `λN/G * K`, far fewer
    parameters than NetVLAD's `N * K` for the same K.

    Padded frames (where `mask` is False) contribute nothing, so a batch padded to its own longest
    video gives the same output as the same videos padded to any longer length.

    Args:
        cluster_size: K, the number of clusters.
        groups: G, the number of groups each expanded frame is split into.
        expansion: λ, the expansion factor applied to the frame features first.
        **kwargs: standard layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `[B, T, N]`.
        mask: optional bool tensor `[B, T]`, True for real frames.
        training: whether BatchNormalization uses batch statistics.

    Example:
    >>> layer = NeXtVLAD(cluster_size=8, groups=4)
    >>> layer(np.zeros((2, 5, 16)), mask=np.ones((2, 5), bool)).shape
    (2, 64)

    Reference:
        Lin, Xiao, Fan, "NeXtVLAD: An Efficient Neural Network to Aggregate Frame-level Features
        for Large-scale Video Classification", ECCV Workshops 2018, arXiv:1811.05014.
    """

    def __init__(self, cluster_size: int, *, groups: int = 8, expansion: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.cluster_size = int(cluster_size)
        self.groups = int(groups)
        self.expansion = int(expansion)
        # The frame mask is consumed here; the pooled output has no frame axis left to mask.
        self.supports_masking = True

    def build(self, input_shape):
        feature_size = input_shape[-1]
        expanded = self.expansion * feature_size
        if expanded % self.groups:
            raise ValueError(
                f"NeXtVLAD: expansion*feature_size={expanded} is not divisible by groups={self.groups}"
            )
        self.group_size = expanded // self.groups  # λN/G
        k, g = self.cluster_size, self.groups
        self.expand = keras.layers.Dense(expanded, name="expand", dtype=self.dtype_policy)
        self.attention = keras.layers.Dense(g, name="attention", dtype=self.dtype_policy)
        self.cluster_logits = keras.layers.Dense(
            g * k, use_bias=False, name="cluster_logits", dtype=self.dtype_policy
        )
        self.cluster_bn = keras.layers.BatchNormalization(name="cluster_bn", dtype=self.dtype_policy)
        self.output_bn = keras.layers.BatchNormalization(name="output_bn", dtype=self.dtype_policy)
        frames_shape = (*input_shape[:-1], expanded)
        self.expand.build(input_shape)
        self.attention.build(frames_shape)
        self.cluster_logits.build(frames_shape)
        self.cluster_bn.build((*input_shape[:-1], g * k))
        self.centers = self.add_weight(
            shape=(self.group_size, k),
            initializer=keras.initializers.RandomNormal(stddev=self.group_size**-0.5),
            name="cluster_centers",
        )
        self.output_bn.build((input_shape[0], self.group_size * k))

    def call(self, inputs, mask=None, training=None):
        k, g, d = self.cluster_size, self.groups, self.group_size
        x = self.expand(inputs)  # [B, T, λN]
        attention = ops.sigmoid(self.attention(x))  # [B, T, G]
        if mask is not None:
            attention = attention * ops.cast(mask, attention.dtype)[..., None]
        logits = self.cluster_logits(x)  # [B, T, G*K]
        logits = self.cluster_bn(logits, training=training, mask=mask)
        shape = ops.shape(x)
        assignment = ops.softmax(ops.reshape(logits, (shape[0], shape[1], g, k)), axis=-1)
        assignment = assignment * attention[..., None]  # [B, T, G, K]
        grouped = ops.reshape(x, (shape[0], shape[1], g, d))  # [B, T, G, λN/G]
        vlad = ops.einsum("btgk,btgd->bdk", assignment, grouped)  # [B, λN/G, K]
        a_sum = ops.sum(assignment, axis=(1, 2))  # [B, K]
        vlad = vlad - a_sum[:, None, :] * ops.cast(self.centers, vlad.dtype)[None]
        vlad = intra_normalize(vlad)  # unit norm per cluster, over the λN/G axis
        vlad = ops.reshape(vlad, (shape[0], d * k))  # [B, λN/G * K]
        return self.output_bn(vlad, training=training)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.expansion * input_shape[-1] // self.groups * self.cluster_size)

    def get_config(self):
        config = super().get_config()
        config.update(cluster_size=self.cluster_size, groups=self.groups, expansion=self.expansion)
        return config
