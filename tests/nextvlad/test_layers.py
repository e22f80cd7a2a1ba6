"""Every layer: config round-trip, symbolic/eager call, one fit step, and its defining maths."""

import keras
import numpy as np
import pytest
from layer_testing import run_layer_checks

from nextvlad.layers import (
    ContextGating,
    FrameMask,
    LogisticClassifier,
    MaskedMeanPooling,
    MoEClassifier,
    NetVLAD,
    NeXtVLAD,
)

RNG = np.random.default_rng(0)
FRAMES = RNG.normal(size=(3, 6, 16)).astype("float32")
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool)


@pytest.mark.parametrize(
    "layer_cls, kwargs, inputs, shape",
    [
        (NeXtVLAD, dict(cluster_size=8, groups=4, expansion=2), dict(inputs=FRAMES, mask=MASK), (3, 8 * 8)),
        (NetVLAD, dict(cluster_size=4), dict(inputs=FRAMES, mask=MASK), (3, 16 * 4)),
        (MaskedMeanPooling, {}, dict(inputs=FRAMES, mask=MASK), (3, 16)),
        (ContextGating, dict(reduction=4), dict(inputs=FRAMES[:, 0]), (3, 16)),
        (LogisticClassifier, dict(num_classes=5, l2_penalty=1e-5), dict(inputs=FRAMES[:, 0]), (3, 5)),
        (MoEClassifier, dict(num_classes=5, num_mixtures=2), dict(inputs=FRAMES[:, 0]), (3, 5)),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_layer_contract(layer_cls, kwargs, inputs, shape):
    run_layer_checks(layer_cls, kwargs, inputs, expected_shape=shape)


def test_frame_mask_marks_real_frames():
    mask = FrameMask()(np.zeros((3, 4, 2), "float32"), np.array([4, 2, 0], "int32"))
    expected = [[True] * 4, [True, True, False, False], [False] * 4]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask), expected)


def test_masked_mean_ignores_padding():
    pooled = keras.ops.convert_to_numpy(MaskedMeanPooling()(FRAMES, mask=MASK))
    np.testing.assert_allclose(pooled[1], FRAMES[1, :3].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(pooled[2], FRAMES[2, 0], rtol=1e-5)


def _nextvlad_reference(layer: NeXtVLAD, frames: np.ndarray, num_frames: int) -> np.ndarray:
    """The six steps of docs/design.md ("Model") in plain numpy, one video, inference mode, from the
    layer's weights."""
    x = frames[:num_frames]  # only real frames
    k, g, d = layer.cluster_size, layer.groups, layer.group_size
    xp = x @ np.array(layer.expand.kernel) + np.array(layer.expand.bias)  # [T, λN]
    alpha = 1 / (1 + np.exp(-(xp @ np.array(layer.attention.kernel) + np.array(layer.attention.bias))))
    logits = xp @ np.array(layer.cluster_logits.kernel)  # [T, G*K]
    bn = layer.cluster_bn
    logits = (logits - np.array(bn.moving_mean)) / np.sqrt(np.array(bn.moving_variance) + bn.epsilon)
    logits = logits * np.array(bn.gamma) + np.array(bn.beta)
    logits = logits.reshape(len(x), g, k)
    assign = np.exp(logits - logits.max(-1, keepdims=True))
    assign = assign / assign.sum(-1, keepdims=True) * alpha[..., None]  # [T, G, K]
    assign = assign.reshape(len(x) * g, k)
    grouped = xp.reshape(len(x) * g, d)
    vlad = assign.T @ grouped  # [K, D]
    vlad = vlad.T - assign.sum(0)[None, :] * np.array(layer.centers)  # [D, K]
    vlad = vlad / np.sqrt(np.maximum((vlad**2).sum(0, keepdims=True), 1e-12))
    flat = vlad.reshape(-1)
    bn = layer.output_bn
    flat = (flat - np.array(bn.moving_mean)) / np.sqrt(np.array(bn.moving_variance) + bn.epsilon)
    return flat * np.array(bn.gamma) + np.array(bn.beta)


def test_nextvlad_matches_numpy_definition_and_ignores_padding():
    layer = NeXtVLAD(cluster_size=4, groups=2, expansion=2)
    layer(FRAMES, mask=MASK)
    # Non-trivial BatchNorm statistics so that the reference exercises them.
    for bn in (layer.cluster_bn, layer.output_bn):
        bn.moving_mean.assign(RNG.normal(size=bn.moving_mean.shape).astype("float32") * 0.1)
        bn.moving_variance.assign(RNG.uniform(0.5, 2.0, size=bn.moving_variance.shape).astype("float32"))
    out = keras.ops.convert_to_numpy(layer(FRAMES, mask=MASK, training=False))
    for video, frames_in_video in enumerate(MASK.sum(1)):
        expected = _nextvlad_reference(layer, FRAMES[video], frames_in_video)
        np.testing.assert_allclose(out[video], expected, rtol=2e-4, atol=2e-5)
    # Whatever sits in the padded frames must not matter.
    noisy = FRAMES.copy()
    noisy[~MASK] = 1e3
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(noisy, mask=MASK, training=False)), out, rtol=1e-5, atol=1e-6
    )


def test_context_gating_is_x_times_sigmoid_gate():
    layer = ContextGating(reduction=4)
    x = FRAMES[:, 0]
    out = keras.ops.convert_to_numpy(layer(x, training=False))
    bn = layer.squeeze_bn
    h = x @ np.array(layer.squeeze.kernel)
    h = (h - np.array(bn.moving_mean)) / np.sqrt(np.array(bn.moving_variance) + bn.epsilon)
    h = np.maximum(h * np.array(bn.gamma) + np.array(bn.beta), 0)
    gates = 1 / (1 + np.exp(-(h @ np.array(layer.excite.kernel))))
    np.testing.assert_allclose(out, x * gates, rtol=1e-5, atol=1e-6)


def test_moe_probabilities_are_gated_mixture_of_experts():
    layer = MoEClassifier(num_classes=3, num_mixtures=2)
    x = FRAMES[:, 0]
    logits = keras.ops.convert_to_numpy(layer(x))
    gate = (x @ np.array(layer.gate.kernel)).reshape(3, 3, 3)
    gate = np.exp(gate) / np.exp(gate).sum(-1, keepdims=True)
    experts = x @ np.array(layer.experts.kernel) + np.array(layer.experts.bias)
    experts = 1 / (1 + np.exp(-experts.reshape(3, 3, 2)))
    probabilities = (gate[..., :2] * experts).sum(-1)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probabilities, rtol=1e-4, atol=1e-6)


def test_l2_penalty_follows_l2_loss_convention():
    layer = LogisticClassifier(num_classes=2, l2_penalty=0.1)
    layer(np.ones((1, 3), "float32"))
    kernel = np.array(layer.dense.kernel)
    np.testing.assert_allclose(float(sum(layer.losses)), 0.1 * (kernel**2).sum() / 2, rtol=1e-5)


@pytest.mark.parametrize(
    "layer", [LogisticClassifier(4), MoEClassifier(4, num_mixtures=3)], ids=["logistic", "moe"]
)
def test_classifier_set_prior_predicts_the_prior_before_training(layer):
    prior = np.array([0.3, 0.01, 1e-5, 0.2])
    layer.build((None, 8))
    layer.set_prior(prior)
    # A zero embedding leaves only the bias (and, for MoE, a uniform gate over M experts and the dummy).
    logits = keras.ops.convert_to_numpy(layer(np.zeros((2, 8), "float32")))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), np.broadcast_to(prior, (2, 4)), rtol=1e-4)
    restored = type(layer).from_config(layer.get_config())  # set_prior changes weights, not the config
    assert restored.get_config() == layer.get_config()
