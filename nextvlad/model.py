"""Model builders: one function turns a `ModelConfig` into a Keras functional model.

```
rgb [B,T,1024] ─► NeXtVLAD(K, G) ──┐
audio [B,T,128] ─► NeXtVLAD(K/2, G/2) ┴► concat ► dropout ► Dense(H) ► BN ► ContextGating ─► embedding
num_frames [B] ─► mask (padded frames count for nothing)                       └► classifier ─► logits
```

With `mix_number = M > 1` there are M such branches; a gate computed from the mean input frame
mixes their logits, and the embedding is the concatenation of the M branch embeddings.
"""

from __future__ import annotations

import keras
from keras import ops

from nextvlad.config import ModelConfig
from nextvlad.layers import (
    ContextGating,
    FrameMask,
    LogisticClassifier,
    MaskedMeanPooling,
    MoEClassifier,
    NetVLAD,
    NeXtVLAD,
)

SERVING_OUTPUTS = ("predictions", "embedding")


@keras.saving.register_keras_serializable(package="nextvlad")
class BranchMixture(keras.layers.Layer):
    """Mixes per-branch logits with a softmax gate: `logit = Σ_m gate_m · logit_m`.

    Call arguments:
        gate: float tensor `[B, M]` (rows sum to one).
        branch_logits: list of M float tensors `[B, C]`.

    Returns:
        `(logits [B, C], stacked branch logits [B, M, C])`; the trainer's distillation loss
        needs the stacked branch logits.
    """

    def call(self, gate, branch_logits):
        stacked = ops.stack(branch_logits, axis=1)  # [B, M, C]
        mixed = ops.sum(stacked * ops.cast(gate, stacked.dtype)[..., None], axis=1)  # [B, C]
        return mixed, stacked

    def compute_output_spec(self, gate, branch_logits):
        batch, classes = branch_logits[0].shape
        return (
            keras.KerasTensor((batch, classes), dtype=branch_logits[0].dtype),
            keras.KerasTensor((batch, len(branch_logits), classes), dtype=branch_logits[0].dtype),
        )


def model_inputs(config: ModelConfig) -> dict[str, keras.KerasTensor]:
    """The named inputs of a model for `config`; the frame axis T is dynamic."""
    if config.input_format == "video":
        return {
            "mean_rgb": keras.Input((config.rgb_size,), name="mean_rgb"),
            "mean_audio": keras.Input((config.audio_size,), name="mean_audio"),
        }
    return {
        "rgb": keras.Input((None, config.rgb_size), name="rgb"),
        "audio": keras.Input((None, config.audio_size), name="audio"),
        "num_frames": keras.Input((), dtype="int32", name="num_frames"),
    }


def _pool(config: ModelConfig, inputs: dict, mask, prefix: str):
    """Pools the frames of both modalities into one vector per video: `[B, D_rgb + D_audio]`."""
    if config.input_format == "video":
        return keras.layers.Concatenate(name=f"{prefix}features")([inputs["mean_rgb"], inputs["mean_audio"]])
    pooled = []
    for modality, clusters, groups in (
        ("rgb", config.cluster_size, config.groups),
        ("audio", config.audio_cluster_size, config.audio_groups),
    ):
        name = f"{prefix}{modality}_{config.pooling}"
        if config.pooling == "nextvlad":
            layer = NeXtVLAD(clusters, groups=groups, expansion=config.expansion, name=name)
        elif config.pooling == "netvlad":
            layer = NetVLAD(clusters, name=name)
        else:
            layer = MaskedMeanPooling(name=name)
        pooled.append(layer(inputs[modality], mask=mask))
    return keras.layers.Concatenate(name=f"{prefix}pooled")(pooled)


def _branch(config: ModelConfig, inputs: dict, mask, prefix: str):
    """One full model: pooling, hidden layer, context gating, classifier. Returns (logits, embedding)."""
    x = _pool(config, inputs, mask, prefix)
    if config.drop_rate:
        x = keras.layers.Dropout(config.drop_rate, name=f"{prefix}dropout")(x)
    x = keras.layers.Dense(config.hidden_size, use_bias=False, name=f"{prefix}hidden")(x)
    x = keras.layers.BatchNormalization(name=f"{prefix}hidden_bn")(x)
    if config.hidden_activation == "relu":
        x = keras.layers.ReLU(name=f"{prefix}hidden_relu")(x)
    embedding = ContextGating(config.gating_reduction, name=f"{prefix}context_gating")(x)
    if config.classifier == "moe":
        classifier = MoEClassifier(
            config.num_classes,
            num_mixtures=config.moe_mixtures,
            l2_penalty=config.l2_penalty,
            name=f"{prefix}classifier",
        )
    else:
        classifier = LogisticClassifier(
            config.num_classes, l2_penalty=config.l2_penalty, name=f"{prefix}classifier"
        )
    return classifier(embedding), embedding


def _mixture_gate(config: ModelConfig, inputs: dict, mask):
    """Softmax gate over branches from the batch-normalised mean input frame: `[B, M]`."""
    if config.input_format == "video":
        mean_frame = keras.layers.Concatenate(name="gate_features")(
            [inputs["mean_rgb"], inputs["mean_audio"]]
        )
    else:
        frames = keras.layers.Concatenate(name="gate_frames")([inputs["rgb"], inputs["audio"]])
        mean_frame = MaskedMeanPooling(name="gate_mean")(frames, mask=mask)
    mean_frame = keras.layers.BatchNormalization(name="gate_bn")(mean_frame)
    return keras.layers.Dense(config.mix_number, activation="softmax", name="gate")(mean_frame)


def build_model(config: ModelConfig, *, name: str | None = None) -> keras.Model:
    """Builds the (training) model for `config`.

    Args:
        config: the model's hyper-parameters (see `ModelConfig.preset`).
        name: the model's name; defaults to the pooling method.

    Returns:
        A functional `keras.Model` taking a dict of named inputs (`rgb [B,T,1024]`,
        `audio [B,T,128]`, `num_frames [B]` for frame-level configs; `mean_rgb`, `mean_audio` for
        `input_format="video"`) and returning a dict with `predictions [B, C]` (probabilities),
        `embedding [B, M·H]` and `logits [B, C]`; mixtures also return `branch_logits [B, M, C]`.
        `serving_model()` keeps only `predictions` and `embedding`.
    """
    inputs = model_inputs(config)
    mask = None
    if config.input_format == "frame":
        mask = FrameMask(name="frame_mask")(inputs["rgb"], inputs["num_frames"])

    if config.mix_number == 1:
        logits, embedding = _branch(config, inputs, mask, prefix="")
        branch_logits = None
    else:
        results = [_branch(config, inputs, mask, prefix=f"branch{m}_") for m in range(config.mix_number)]
        gate = _mixture_gate(config, inputs, mask)
        logits, branch_logits = BranchMixture(name="mixture")(gate, [r[0] for r in results])
        embedding = keras.layers.Concatenate(name="embeddings")([r[1] for r in results])

    # Outputs in float32 even under a mixed-precision policy.
    outputs = {
        "predictions": keras.layers.Activation("sigmoid", dtype="float32", name="predictions")(logits),
        "embedding": keras.layers.Activation("linear", dtype="float32", name="embedding")(embedding),
        "logits": keras.layers.Activation("linear", dtype="float32", name="logits")(logits),
    }
    if branch_logits is not None:
        outputs["branch_logits"] = keras.layers.Activation("linear", dtype="float32", name="branch_logits")(
            branch_logits
        )
    return keras.Model(inputs, outputs, name=name or f"{config.pooling}_model")


def serving_model(model: keras.Model) -> keras.Model:
    """The same weights, with only the outputs a user scores with: `predictions` and `embedding`."""
    outputs = {key: model.get_layer(key).output for key in SERVING_OUTPUTS}
    return keras.Model(model.input, outputs, name=model.name)


def count_trainable_parameters(model: keras.Model) -> int:
    """Weights, biases and BatchNorm γ/β; no moving statistics (the DESIGN.md convention)."""
    return int(sum(int(ops.size(w)) for w in model.trainable_weights))
