"""build_model: the paper's parameter counts, outputs, padding invariance, save/load, backends."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from nextvlad import ModelConfig, build_model, count_trainable_parameters, serving_model

# Tiny versions of every model family, fast enough for the default suite.
TINY = dict(num_classes=7, cluster_size=4, groups=2, hidden_size=16, gating_reduction=4, drop_rate=0.0)


def _frames(batch: int, frames: int, num_frames, *, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    # What the records hold: uint8-quantized frames, zero after each video's end.
    out = {
        "rgb": rng.integers(0, 256, size=(batch, frames, 1024), dtype=np.uint8),
        "audio": rng.integers(0, 256, size=(batch, frames, 128), dtype=np.uint8),
        "num_frames": np.asarray(num_frames, "int32"),
    }
    for key in ("rgb", "audio"):
        out[key][np.arange(frames)[None, :] >= out["num_frames"][:, None]] = 0
    return out


@pytest.mark.parametrize(
    "preset, expected",
    [("paper", 88_889_378), ("final-single", 78_643_170), ("final", 235_935_273)],
)
def test_trainable_parameters_match_the_reference_implementation(preset, expected):
    model = build_model(ModelConfig.preset(preset))
    assert count_trainable_parameters(model) == expected
    keras.backend.clear_session()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(pooling="nextvlad"),
        dict(pooling="netvlad"),
        dict(pooling="mean"),
        dict(pooling="nextvlad", classifier="moe", mix_number=3),
    ],
    ids=["nextvlad", "netvlad", "mean", "mixture-moe"],
)
def test_outputs_and_shapes(overrides):
    config = ModelConfig(**TINY, **overrides)
    model = build_model(config)
    out = model.predict(_frames(3, 5, [5, 2, 1]), verbose=0)
    assert out["predictions"].shape == (3, 7)
    assert out["embedding"].shape == (3, 16 * config.mix_number)
    assert ((out["predictions"] > 0) & (out["predictions"] < 1)).all()
    np.testing.assert_allclose(out["predictions"], 1 / (1 + np.exp(-out["logits"])), rtol=1e-5)
    if config.mix_number > 1:
        assert out["branch_logits"].shape == (3, 3, 7)
    assert set(serving_model(model).output) == {"predictions", "embedding"}


def test_mixture_logit_is_gated_sum_of_branch_logits():
    model = build_model(ModelConfig(**TINY, mix_number=3))
    inputs = _frames(4, 6, [6, 3, 2, 1])
    out = model.predict(inputs, verbose=0)
    gate_model = keras.Model(model.input, model.get_layer("gate").output)
    gate = gate_model.predict(inputs, verbose=0)
    np.testing.assert_allclose(gate.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["logits"], np.einsum("bm,bmc->bc", gate, out["branch_logits"]), atol=1e-5)


def test_video_level_model_takes_mean_features():
    model = build_model(ModelConfig.preset("video", num_classes=5, hidden_size=32))
    assert {i.name for i in model.inputs} == {"mean_rgb", "mean_audio"}
    rng = np.random.default_rng(1)
    out = model.predict(
        {"mean_rgb": rng.normal(size=(2, 1024)), "mean_audio": rng.normal(size=(2, 128))}, verbose=0
    )
    config = ModelConfig.preset("video", num_classes=5, hidden_size=32)
    assert out["predictions"].shape == (2, 5) and out["embedding"].shape == (2, config.embedding_size)


@pytest.mark.parametrize("pooling", ["nextvlad", "netvlad", "mean"])
def test_padding_to_own_longest_video_equals_padding_to_max_frames(pooling):
    model = build_model(ModelConfig(**TINY, pooling=pooling, mix_number=2))
    short = _frames(3, 9, [9, 4, 1], seed=3)
    long = {key: value for key, value in short.items()}
    for key in ("rgb", "audio"):
        padded = np.zeros((3, 300, short[key].shape[-1]), "uint8")
        padded[:, :9] = short[key]
        # Garbage, not zeros, after each video's end: only num_frames may decide what counts.
        padded[:, 9:] = 201
        for video, n in enumerate(short["num_frames"]):
            padded[video, n:9] = 201
        long[key] = padded
    a, b = model.predict(short, verbose=0), model.predict(long, verbose=0)
    for key in ("predictions", "embedding"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_keras_file_round_trip_in_safe_mode(tmp_path):
    model = serving_model(build_model(ModelConfig(**TINY, classifier="moe", mix_number=2)))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    inputs = _frames(2, 5, [5, 3])
    expected, actual = model.predict(inputs, verbose=0), loaded.predict(inputs, verbose=0)
    for key in ("predictions", "embedding"):
        np.testing.assert_array_equal(expected[key], actual[key])


def test_mixed_precision_keeps_float32_outputs():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(ModelConfig(**TINY, classifier="moe"))
        out = model.predict(_frames(2, 4, [4, 2]), verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out["predictions"].dtype == np.float32 and np.isfinite(out["logits"]).all()


_OTHER_BACKEND_SCRIPT = """
import json, sys
import keras, numpy as np
import nextvlad  # registers the layers
assert keras.backend.backend() == "torch", keras.backend.backend()
data = np.load(sys.argv[2])
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
out = model.predict({k: data[k] for k in ("rgb", "audio", "num_frames")}, verbose=0)
np.savez(sys.argv[3], **{k: np.asarray(v) for k, v in out.items()})
"""


def _run_with_torch(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("pooling", ["nextvlad", "netvlad"])
def test_forward_pass_under_torch_backend_matches_tensorflow(tmp_path, pooling):
    config = ModelConfig(**TINY, pooling=pooling, classifier="moe", mix_number=2)
    model = serving_model(build_model(config))
    inputs = _frames(3, 6, [6, 4, 1], seed=5)
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = tmp_path / "run.py"
    script.write_text(_OTHER_BACKEND_SCRIPT)
    result = _run_with_torch(
        [
            sys.executable,
            str(script),
            str(tmp_path / "model.keras"),
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.npz"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torch_out = np.load(tmp_path / "out.npz")
    tf_out = model.predict(inputs, verbose=0)
    for key in ("predictions", "embedding"):
        np.testing.assert_allclose(torch_out[key], tf_out[key], rtol=1e-4, atol=1e-5)


def test_layer_suite_passes_under_torch_backend():
    """The per-layer checks (config, calls, fit step, numpy definitions) on the second backend."""
    layers_tests = os.path.join(os.path.dirname(__file__), "test_layers.py")
    result = _run_with_torch(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:bqemulator", layers_tests]
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = json.dumps(result.stdout.strip().splitlines()[-1:])
    assert " passed" in summary and "failed" not in summary, summary


def test_model_takes_uint8_frames_and_owns_its_preprocessing():
    """The model's output on stored uint8 frames equals a float reference pipeline fed by hand."""
    rng = np.random.default_rng(9)
    scale = rng.uniform(0.5, 2.0, 1024).astype(np.float32)
    config = ModelConfig(**TINY, pooling="mean", max_frames=4, reverse_whitening=True)
    model = build_model(config, rgb_scale=scale)
    assert model.input["rgb"].dtype == "uint8" and model.input["num_frames"].dtype == "int32"
    inputs = _frames(2, 6, [6, 2], seed=4)  # video 0 is longer than max_frames: only 4 frames count
    pooled = keras.Model(model.input, model.get_layer("rgb_mean").output).predict(inputs, verbose=0)
    # By hand: the first min(n, 4) frames, dequantized (q·4/255 + 4/512 − 2), reverse-whitened, averaged.
    for video, n in enumerate([4, 2]):
        frames = inputs["rgb"][video, :n].astype(np.float64) * 4 / 255 + 4 / 512 - 2
        expected = ((frames - 4 / 512) * scale).mean(axis=0)
        np.testing.assert_allclose(pooled[video], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rgb_scale"):
        build_model(config)
    with pytest.raises(ValueError, match="reverse_whitening"):
        build_model(ModelConfig(**TINY), rgb_scale=scale)
    saved = serving_model(model)
    np.testing.assert_array_equal(saved.get_layer("preprocessing").rgb_scale.numpy(), scale)
