"""Re-export a model saved before models owned their preprocessing.

Models used to take dequantized float32 frames (and reverse whitening was a scoring flag); today's take
the records' uint8 frames and do dequantization, the frame limit and reverse whitening inside. This
rebuilds the model from the model_dir's `config.json`, copies every weight across by layer name, stores
the reverse-whitening scale (from `--pca_eigenvals`, or from the path recorded in `train_config.json`),
checks that the new model on uint8 frames gives the old model's scores on the same frames dequantized,
and writes it as `model.keras` (the old file is kept as `model.pre-uint8.keras`).

    python -m trainer.export --model_dir runs/paper [--pca_eigenvals yt8m_pca/eigenvals.npy]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

LEGACY_FILE = "model.pre-uint8.keras"


def _old_inputs(new_inputs: dict[str, np.ndarray], scale: np.ndarray | None) -> dict[str, np.ndarray]:
    """What the old model was fed for the same records: dequantized (and reverse-whitened) floats."""
    from nextvlad import records

    if "rgb" not in new_inputs:
        mean_rgb = new_inputs["mean_rgb"]
        return {
            **new_inputs,
            "mean_rgb": records.reverse_whiten(mean_rgb, scale) if scale is not None else mean_rgb,
        }
    real = np.arange(new_inputs["rgb"].shape[1])[None, :] < new_inputs["num_frames"][:, None]
    rgb = records.dequantize(new_inputs["rgb"])
    if scale is not None:
        rgb = records.reverse_whiten(rgb, scale)
    audio = records.dequantize(new_inputs["audio"])
    return {
        "rgb": rgb * real[..., None],
        "audio": audio * real[..., None],
        "num_frames": new_inputs["num_frames"],
    }


def export(model_dir: str, *, pca_eigenvals: str | None = None, atol: float = 1e-4) -> dict[str, Any]:
    """Re-exports `model_dir/model.keras` under the current serving contract (see the module docstring).

    Returns:
        `{"model": new path, "legacy": old path, "max_abs_difference": float, "reverse_whitening": bool}`.

    Raises:
        FileNotFoundError: no `model.keras` or `config.json` in `model_dir`.
        ValueError: the model already follows the current contract, or the new model disagrees with the old.
    """
    import keras

    import nextvlad  # noqa: F401  (registers the layers)
    from nextvlad import records
    from nextvlad.config import ModelConfig
    from nextvlad.model import build_model, serving_model

    model_path = os.path.join(model_dir, "model.keras")
    config_path = os.path.join(model_dir, "config.json")
    for path in (model_path, config_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist; pass the model_dir that trainer.train wrote")
    old = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    if any(layer.name == "preprocessing" for layer in old.layers):
        raise ValueError(f"{model_path} already takes the records' features as stored; nothing to do")
    train_config_path = os.path.join(model_dir, "train_config.json")
    if pca_eigenvals is None and os.path.exists(train_config_path):
        with open(train_config_path) as f:
            pca_eigenvals = json.load(f).get("pca_eigenvals")
    scale = records.reverse_whitening_scale(pca_eigenvals) if pca_eigenvals else None
    config = ModelConfig.from_json(config_path).replace(reverse_whitening=scale is not None)
    new = serving_model(build_model(config, rgb_scale=scale))
    old_layers = {layer.name: layer for layer in old.layers if layer.weights}
    for layer in new.layers:
        if layer.name in old_layers:
            layer.set_weights(old_layers.pop(layer.name).get_weights())
    if old_layers:
        raise ValueError(
            f"{model_path}: layers {sorted(old_layers)} have no counterpart in config.json's model"
        )

    rng = np.random.default_rng(0)
    if config.input_format == "frame":
        num_frames = np.array([1, 7, 16], np.int32)
        probe = {
            "rgb": rng.integers(0, 256, (3, 16, config.rgb_size), dtype=np.uint8),
            "audio": rng.integers(0, 256, (3, 16, config.audio_size), dtype=np.uint8),
            "num_frames": num_frames,
        }
        for name in ("rgb", "audio"):
            probe[name][np.arange(16)[None, :] >= num_frames[:, None]] = 0
    else:
        probe = {
            "mean_rgb": rng.normal(0, 0.5, (3, config.rgb_size)).astype(np.float32),
            "mean_audio": rng.normal(0, 0.5, (3, config.audio_size)).astype(np.float32),
        }
    expected = old.predict_on_batch(_old_inputs(probe, scale))["predictions"]
    got = new.predict_on_batch(probe)["predictions"]
    difference = float(np.max(np.abs(np.asarray(expected) - np.asarray(got))))
    if difference > atol:
        raise ValueError(
            f"the re-exported model differs from {model_path} by {difference:.2e}; nothing written"
        )
    legacy = os.path.join(model_dir, LEGACY_FILE)
    os.replace(model_path, legacy)
    new.save(model_path)
    config.to_json(config_path)
    return {
        "model": model_path,
        "legacy": legacy,
        "max_abs_difference": difference,
        "reverse_whitening": scale is not None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.export",
        description="Re-export a model saved before models took uint8 frames and owned their preprocessing.",
    )
    parser.add_argument("--model_dir", required=True, help="the model_dir trainer.train wrote (local)")
    parser.add_argument(
        "--pca_eigenvals",
        help="yt8m_pca/eigenvals.npy, if the model was trained with reverse whitening (default: the path "
        "recorded in train_config.json, if any)",
    )
    args = parser.parse_args(argv)
    try:
        result = export(args.model_dir, pca_eigenvals=args.pca_eigenvals)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"re-exported {result['model']} (reverse whitening: {result['reverse_whitening']}; scores within "
        f"{result['max_abs_difference']:.1e} of the old model); the old file is {result['legacy']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
