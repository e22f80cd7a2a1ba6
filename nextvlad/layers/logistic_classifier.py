"""One independent logistic regression per class."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="nextvlad")
class LogisticClassifier(keras.layers.Layer):
    """Maps an embedding to one logit per class: `x · W + b`.

    Returns logits, not probabilities: the model applies the sigmoid, and the mixture of
    branches and the distillation loss work on logits.

    Args:
        num_classes: C.
        l2_penalty: weight decay on `W`, in the `tf.nn.l2_loss` convention (`λ/2 · ΣW²`) that
            the reference implementation used.
        **kwargs: standard layer arguments.

    Call arguments:
        inputs: float tensor `[B, H]`.

    Example:
    >>> LogisticClassifier(num_classes=3)(np.ones((2, 8))).shape
    (2, 3)
    """

    def __init__(self, num_classes: int, *, l2_penalty: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.l2_penalty = float(l2_penalty)

    def build(self, input_shape):
        regularizer = keras.regularizers.L2(self.l2_penalty / 2) if self.l2_penalty else None
        self.dense = keras.layers.Dense(
            self.num_classes, kernel_regularizer=regularizer, name="logits", dtype=self.dtype_policy
        )
        self.dense.build(input_shape)

    def call(self, inputs):
        return self.dense(inputs)  # [B, C]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, l2_penalty=self.l2_penalty)
        return config
