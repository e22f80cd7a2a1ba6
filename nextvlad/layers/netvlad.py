"""The NetVLAD pooling layer (Arandjelović et al., CVPR 2016), the paper's main baseline."""

from __future__ import annotations

import keras
from keras import ops

from nextvlad.layers._util import intra_normalize


@keras.saving.register_keras_serializable(package="nextvlad")
class NetVLAD(keras.layers.Layer):
    """Soft-assigns every frame to K clusters and sums the residuals to the cluster anchors.

    Output size `N * K`; the per-cluster residual sums are L2-normalised (intra-normalisation)
    and batch-normalised, as in the NeXtVLAD layer, so the two are comparable.

    Args:
        cluster_size: K, the number of clusters.
        **kwargs: standard layer arguments.

    Call arguments:
        inputs: float tensor `[B, T, N]`.
        mask: optional bool tensor `[B, T]`, True for real frames.
        training: whether BatchNormalization uses batch statistics.

    Example:
    >>> NetVLAD(cluster_size=4)(np.zeros((2, 5, 16)), mask=np.ones((2, 5), bool)).shape
    (2, 64)

    Reference:
        Arandjelović et al., "NetVLAD: CNN architecture for weakly supervised place recognition",
        CVPR 2016; Miech et al., "Learnable pooling with Context Gating for video
        classification", arXiv:1706.06905.
    """

    def __init__(self, cluster_size: int, **kwargs):
        super().__init__(**kwargs)
        self.cluster_size = int(cluster_size)
        # The frame mask is consumed here; the pooled output has no frame axis left to mask.
        self.supports_masking = True

    def build(self, input_shape):
        feature_size = input_shape[-1]
        self.feature_size = feature_size
        k = self.cluster_size
        self.cluster_logits = keras.layers.Dense(
            k, use_bias=False, name="cluster_logits", dtype=self.dtype_policy
        )
        self.cluster_bn = keras.layers.BatchNormalization(name="cluster_bn", dtype=self.dtype_policy)
        self.output_bn = keras.layers.BatchNormalization(name="output_bn", dtype=self.dtype_policy)
        self.cluster_logits.build(input_shape)
        self.cluster_bn.build((*input_shape[:-1], k))
        self.centers = self.add_weight(
            shape=(feature_size, k),
            initializer=keras.initializers.RandomNormal(stddev=feature_size**-0.5),
            name="cluster_centers",
        )
        self.output_bn.build((input_shape[0], feature_size * k))

    def call(self, inputs, mask=None, training=None):
        logits = self.cluster_bn(self.cluster_logits(inputs), training=training, mask=mask)
        assignment = ops.softmax(logits, axis=-1)  # [B, T, K]
        if mask is not None:
            assignment = assignment * ops.cast(mask, assignment.dtype)[..., None]
        vlad = ops.einsum("btk,btn->bnk", assignment, inputs)  # [B, N, K]
        a_sum = ops.sum(assignment, axis=1)  # [B, K]
        vlad = vlad - a_sum[:, None, :] * ops.cast(self.centers, vlad.dtype)[None]
        vlad = intra_normalize(vlad)
        vlad = ops.reshape(vlad, (ops.shape(vlad)[0], self.feature_size * self.cluster_size))
        return self.output_bn(vlad, training=training)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1] * self.cluster_size)

    def get_config(self):
        config = super().get_config()
        config.update(cluster_size=self.cluster_size)
        return config
