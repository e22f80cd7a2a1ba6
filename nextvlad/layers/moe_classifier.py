"""Mixture-of-experts classifier, as in the YouTube-8M starter code."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from nextvlad.layers.logistic_classifier import prior_log_odds

# Probabilities are clipped this far from 0 and 1 before they are turned back into logits.
_PROBABILITY_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="nextvlad")
class MoEClassifier(keras.layers.Layer):
    """Per class, a softmax gate mixes M logistic experts and one always-zero "dummy" expert.

    `p_c = Σ_m softmax(g_c)_m · sigmoid(e_{c,m})`, gate `g = x · Wg` (no bias, C·(M+1) outputs),
    experts `e = x · We + be` (C·M outputs). Returns logits `log(p / (1 - p))`, so that the model's
    sigmoid gives back p and the mixture of branches can work on logits.

    Args:
        num_classes: C.
        num_mixtures: M experts per class.
        l2_penalty: weight decay on both kernels (`λ/2 · ΣW²`).
        **kwargs: standard layer arguments.

    Call arguments:
        inputs: float tensor `[B, H]`.

    Example:
    >>> MoEClassifier(num_classes=3, num_mixtures=2)(np.ones((2, 8))).shape
    (2, 3)

    Reference:
        Jordan & Jacobs, "Hierarchical mixtures of experts and the EM algorithm", 1994;
        Abu-El-Haija et al., "YouTube-8M: A Large-Scale Video Classification Benchmark", 2016.
    """

    def __init__(self, num_classes: int, *, num_mixtures: int = 2, l2_penalty: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.num_mixtures = int(num_mixtures)
        self.l2_penalty = float(l2_penalty)

    def build(self, input_shape):
        regularizer = keras.regularizers.L2(self.l2_penalty / 2) if self.l2_penalty else None
        c, m = self.num_classes, self.num_mixtures
        self.gate = keras.layers.Dense(
            c * (m + 1), use_bias=False, kernel_regularizer=regularizer, name="gate", dtype=self.dtype_policy
        )
        self.experts = keras.layers.Dense(
            c * m, kernel_regularizer=regularizer, name="experts", dtype=self.dtype_policy
        )
        self.gate.build(input_shape)
        self.experts.build(input_shape)

    def call(self, inputs):
        c, m = self.num_classes, self.num_mixtures
        batch = ops.shape(inputs)[0]
        gates = ops.softmax(ops.reshape(self.gate(inputs), (batch, c, m + 1)), axis=-1)  # [B, C, M+1]
        experts = ops.sigmoid(ops.reshape(self.experts(inputs), (batch, c, m)))  # [B, C, M]
        probabilities = ops.sum(gates[..., :m] * experts, axis=-1)  # [B, C]
        # In float16, 1 - 1e-7 rounds to 1 and the logit would be infinite.
        probabilities = ops.cast(probabilities, "float32")
        probabilities = ops.clip(probabilities, _PROBABILITY_EPSILON, 1 - _PROBABILITY_EPSILON)
        return ops.log(probabilities) - ops.log1p(-probabilities)

    def set_prior(self, prior) -> None:
        """Sets the experts' bias so that an untrained layer predicts each class's frequency `p`.

        Untrained, the gate (no bias, small random kernel) gives about `1/(M+1)` to each expert and to the
        dummy expert, so `p_c ≈ M/(M+1) · sigmoid(b_c)`: every expert of class c gets the bias
        `logit(p_c · (M+1)/M)`.

        Args:
            prior: a frequency for every class (`[C]`) or one for all; values are clipped into (0, 1).
        """
        m = self.num_mixtures
        expert_prior = np.asarray(prior, "float64") * (m + 1) / m
        bias = prior_log_odds(expert_prior, self.num_classes)  # [C]
        self.experts.bias.assign(np.repeat(bias, m))  # expert (c, m) is output c*M + m

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, num_mixtures=self.num_mixtures, l2_penalty=self.l2_penalty
        )
        return config
