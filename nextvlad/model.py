"""Model builders: one function turns a `ModelConfig` into a Keras functional model.

```
rgb uint8 [B,T,1024] ──┐                ┌► NeXtVLAD(K, G) ─────┐
audio uint8 [B,T,128] ─┼► preprocessing ┼► NeXtVLAD(K/2, G/2) ─┴► concat ► dropout ► Dense(H) ► BN ► CG ┐
num_frames [B] ────────┘ (dequantize,   └► mask (padded frames count for nothing)    embedding ◄──────┤
                          frame limit, reverse whitening)                  logits ◄─ classifier ◄──────┘
```

The model takes what the records hold and owns every preprocessing step (`nextvlad.layers.preprocessing`),
so a saved model needs no flags to be fed correctly.

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
    FramePreprocessing,
    LogisticClassifier,
    MaskedMeanPooling,
    MoEClassifier,
    NetVLAD,
    NeXtVLAD,
    VideoPreprocessing,
)
from nextvlad.serving import PREPROCESSING_LAYER, SERVING_OUTPUTS


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
    """The named inputs of a model for `config`, as the records store them; the frame axis T is dynamic.

    Frame level: `rgb` uint8 [B, T, 1024], `audio` uint8 [B, T, 128], `num_frames` int32 [B]. Video level:
    `mean_rgb` float32 [B, 1024], `mean_audio` float32 [B, 128].
    """
    if config.input_format == "video":
        return {
            "mean_rgb": keras.Input((config.rgb_size,), name="mean_rgb"),
            "mean_audio": keras.Input((config.audio_size,), name="mean_audio"),
        }
    return {
        "rgb": keras.Input((None, config.rgb_size), dtype="uint8", name="rgb"),
        "audio": keras.Input((None, config.audio_size), dtype="uint8", name="audio"),
        "num_frames": keras.Input((), dtype="int32", name="num_frames"),
    }


def _preprocess(config: ModelConfig, inputs: dict) -> tuple[dict, keras.KerasTensor | None]:
    """The network's float features from the raw inputs, and the frame mask (None at video level)."""
    options = dict(
        reverse_whitening=config.reverse_whitening, rgb_size=config.rgb_size, name=PREPROCESSING_LAYER
    )
    if config.input_format == "video":
        mean_rgb, mean_audio = VideoPreprocessing(**options)(inputs["mean_rgb"], inputs["mean_audio"])
        return {"mean_rgb": mean_rgb, "mean_audio": mean_audio}, None
    rgb, audio, num_frames = FramePreprocessing(config.max_frames, **options)(
        inputs["rgb"], inputs["audio"], inputs["num_frames"]
    )
    mask = FrameMask(name="frame_mask")(rgb, num_frames)
    return {"rgb": rgb, "audio": audio, "num_frames": num_frames}, mask


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


def build_model(config: ModelConfig, *, rgb_scale=None, name: str | None = None) -> keras.Model:
    """Builds the (training) model for `config`.

    Args:
        config: the model's hyper-parameters (see `ModelConfig.preset`).
        rgb_scale: the reverse-whitening scale [rgb_size] (`nextvlad.records.reverse_whitening_scale`);
            required when `config.reverse_whitening`, refused otherwise. It is stored in the model.
        name: the model's name; defaults to the pooling method.

    Returns:
        A functional `keras.Model` taking a dict of named inputs as the records store them (`rgb` uint8
        [B,T,1024], `audio` uint8 [B,T,128], `num_frames` int32 [B] for frame-level configs; float
        `mean_rgb`, `mean_audio` for `input_format="video"`; see `model_inputs`) and returning a dict
        with `predictions [B, C]` (probabilities),
        `embedding [B, M·H]` and `logits [B, C]`; mixtures also return `branch_logits [B, M, C]`.
        `serving_model()` keeps only `predictions` and `embedding`.
    """
    if config.reverse_whitening and rgb_scale is None:
        raise ValueError(
            "config.reverse_whitening is set but no rgb_scale was given; pass "
            "rgb_scale=nextvlad.records.reverse_whitening_scale('yt8m_pca/eigenvals.npy')"
        )
    if rgb_scale is not None and not config.reverse_whitening:
        raise ValueError("rgb_scale was given but config.reverse_whitening is False; set it to True")
    inputs = model_inputs(config)
    features, mask = _preprocess(config, inputs)

    if config.mix_number == 1:
        logits, embedding = _branch(config, features, mask, prefix="")
        branch_logits = None
    else:
        results = [_branch(config, features, mask, prefix=f"branch{m}_") for m in range(config.mix_number)]
        gate = _mixture_gate(config, features, mask)
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
    model = keras.Model(inputs, outputs, name=name or f"{config.pooling}_model")
    if rgb_scale is not None:
        model.get_layer(PREPROCESSING_LAYER).set_rgb_scale(rgb_scale)
    return model


def serving_model(model: keras.Model) -> keras.Model:
    """The same weights, with only the outputs a user scores with: `predictions` and `embedding`."""
    outputs = {key: model.get_layer(key).output for key in SERVING_OUTPUTS}
    return keras.Model(model.input, outputs, name=model.name)


def count_trainable_parameters(model: keras.Model) -> int:
    """Weights, biases and BatchNorm γ/β; no moving statistics (the convention of docs/design.md, "Model")."""
    return int(sum(int(ops.size(w)) for w in model.trainable_weights))
