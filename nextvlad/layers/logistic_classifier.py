"""One independent logistic regression per class."""

from __future__ import annotations

import keras
import numpy as np

# A prior of exactly 0 or 1 would give an infinite bias.
_PRIOR_EPSILON = 1e-6


def prior_log_odds(prior, num_classes: int) -> np.ndarray:
    """`log(p / (1 - p))` of a class prior (a scalar or `[C]` frequencies), clipped away from 0 and 1."""
    p = np.clip(
        np.broadcast_to(np.asarray(prior, "float64"), (num_classes,)), _PRIOR_EPSILON, 1 - _PRIOR_EPSILON
    )
    return (np.log(p) - np.log1p(-p)).astype("float32")


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

    def set_prior(self, prior) -> None:
        """Sets the bias to the prior's log-odds, so that an untrained layer predicts each class's frequency.

        With 0.5 for every class (a zero bias) the first loss is `C · log 2` per video, ~2,700 for 3,862
        classes, and the first steps are spent pushing thousands of rare classes down.

        Args:
            prior: a frequency for every class (`[C]`) or one for all; values are clipped into (0, 1).
        """
        self.dense.bias.assign(prior_log_odds(prior, self.num_classes))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, l2_penalty=self.l2_penalty)
        return config
