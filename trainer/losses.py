"""Training losses of the NeXtVLAD paper, in `keras.ops` so they run on every Keras backend.

- Single model: binary cross-entropy summed over classes, averaged over the batch (the YouTube-8M
  `CrossEntropyLoss`, computed from logits for numerical stability).
- Mixture of M branches with on-the-fly knowledge distillation (paper §4.3, docs/design.md "Model"):

      loss = CE(mixture) + Σ_m CE(branch m)
             + λ_KD · Σ_m KL(softmax(logit / T) ‖ softmax(logit_m / T))

  The mixture's distribution is the teacher: gradients of the KL term flow only into the branches.
- Plus the layers' regularisation losses (L2 on the classifier).
- Fine-tuning on rated segments (`trainer.train --segment_labels`): a per-class mask (the `rated` sample
  weights of `nextvlad.yt8m.make_segment_dataset`) keeps only the rated classes of each segment in the
  cross-entropy sums; the distillation term, which compares whole distributions, is unchanged.

`TrainingModel` wraps a model from `nextvlad.build_model` and computes this loss in `compute_loss`,
so `fit()` works unchanged (progress bars, callbacks, `tf.distribute`, mixed precision).
"""

from __future__ import annotations

import logging
from typing import Any

import keras
from keras import ops

from nextvlad.config import ModelConfig

logger = logging.getLogger(__name__)


def binary_cross_entropy(labels: Any, logits: Any, *, label_smoothing: float = 0.0, mask: Any = None) -> Any:
    """Per-video cross-entropy of independent sigmoids, summed over classes.

    Args:
        labels: multi-hot targets `[..., C]` (0/1).
        logits: `[..., C]` pre-sigmoid scores.
        label_smoothing: targets become `y · (1 - ε) + ε / 2`.
        mask: optional `[..., C]` weights (0/1): only the classes it keeps are summed.

    Returns:
        `[...]`: `Σ_c m_c (−y log σ(z) − (1 − y) log(1 − σ(z)))`.
    """
    logits = ops.cast(logits, "float32")
    labels = ops.cast(labels, "float32")
    if label_smoothing:
        labels = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
    # log(1 + e^z) - z·y, written so that neither exp() can overflow.
    per_class = ops.relu(logits) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))  # [..., C]
    if mask is not None:
        per_class = per_class * ops.cast(mask, "float32")
    return ops.sum(per_class, axis=-1)


def distillation_divergence(teacher_logits: Any, student_logits: Any, *, temperature: float) -> Any:
    """KL(softmax(teacher / T) ‖ softmax(student / T)) over the class axis; no gradient to the teacher.

    Args:
        teacher_logits: `[B, C]` (the mixture's logits).
        student_logits: `[B, M, C]` (each branch's logits).
        temperature: T > 0; softens both distributions.

    Returns:
        `[B, M]`: one divergence per video and branch.
    """
    teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32"))[:, None, :] / temperature  # [B, 1, C]
    student = ops.cast(student_logits, "float32") / temperature  # [B, M, C]
    log_teacher = ops.log_softmax(teacher, axis=-1)
    log_student = ops.log_softmax(student, axis=-1)
    return ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), axis=-1)


def nextvlad_loss(
    labels: Any,
    outputs: dict[str, Any],
    *,
    kd_temperature: float = 3.0,
    kd_weight: float = 9.0,
    label_smoothing: float = 0.0,
    mask: Any = None,
) -> Any:
    """The data term of the training loss (without regularisation), a scalar.

    Args:
        labels: multi-hot `[B, C]`.
        outputs: the model's output dict: `logits [B, C]`, and for mixtures `branch_logits [B, M, C]`.
        kd_temperature: T of the distillation term.
        kd_weight: λ_KD; 0 turns distillation off.
        label_smoothing: see `binary_cross_entropy`.
        mask: optional `[B, C]` class mask of the cross-entropy terms (rated segments: the rated classes).

    Returns:
        Batch mean of `CE(mixture) [+ Σ_m CE(branch m) + λ_KD · Σ_m KL_m]`.
    """
    loss = ops.mean(
        binary_cross_entropy(labels, outputs["logits"], label_smoothing=label_smoothing, mask=mask)
    )
    branch_logits = outputs.get("branch_logits")
    if branch_logits is not None:
        branch_ce = binary_cross_entropy(
            ops.expand_dims(labels, 1),
            branch_logits,
            label_smoothing=label_smoothing,
            mask=None if mask is None else ops.expand_dims(mask, 1),
        )  # [B, M]
        loss = loss + ops.mean(ops.sum(branch_ce, axis=1))
        if kd_weight:
            kl = distillation_divergence(
                outputs["logits"], branch_logits, temperature=kd_temperature
            )  # [B, M]
            loss = loss + kd_weight * ops.mean(ops.sum(kl, axis=1))
    return loss


def _scale_for_replicas(loss: Any) -> Any:
    """Each tf.distribute replica sees 1/R of the global batch; gradients are summed over replicas."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            return loss / replicas
    return loss


class TrainingModel(keras.Model):
    """A NeXtVLAD network plus its training loss; train it with `compile(optimizer=...)` and `fit()`.

    Only the wrapped `network` is exported for serving; this wrapper exists for `compute_loss`.

    Args:
        network: a model from `nextvlad.build_model` (dict outputs with `logits`, and
            `branch_logits` for mixtures).
        config: the network's config (distillation temperature and weight).
        label_smoothing: see `binary_cross_entropy`.
        **kwargs: standard model arguments.

    Call arguments:
        inputs: the network's input dict.
        training: whether dropout and BatchNorm run in training mode.
    """

    def __init__(
        self, network: keras.Model, config: ModelConfig, *, label_smoothing: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.network = network
        self.kd_temperature = float(config.kd_temperature)
        self.kd_weight = float(config.kd_weight)
        self.label_smoothing = float(label_smoothing)
        self.built = network.built  # a functional network is built on construction; nothing to add

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Every video counts once; per-class sample weights [B, C] (rated segments) mask classes out.
        del x, training
        loss = nextvlad_loss(
            y,
            y_pred,
            kd_temperature=self.kd_temperature,
            kd_weight=self.kd_weight,
            label_smoothing=self.label_smoothing,
            mask=sample_weight,
        )
        for extra in self.losses:  # L2 on the classifier (inside the JAX stateless scope on that backend)
            loss = loss + ops.sum(ops.cast(extra, "float32"))
        return _scale_for_replicas(loss)
