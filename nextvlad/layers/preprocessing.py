"""The model's input preprocessing: what turns stored YouTube-8M features into the network's inputs.

Models take what the records hold (uint8-quantized frames, or float mean features at video level) and do
everything else inside, on the device, so that training, evaluation and scoring cannot disagree:

- dequantization `x = q · 4/255 + 4/512 - 2` (the dataset's reader formula), computed in float32;
- the frame limit (`max_frames`: later frames are dropped, `num_frames` clipped);
- optional reverse whitening of rgb, `(x - 4/512) · scale` (NeXtVLAD paper §3.3), with `scale` a
  non-trainable weight of the model, saved in `model.keras`;
- padded frames set to exactly 0, so a zero-padded uint8 batch gives the same features as no padding.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from nextvlad.records import DEQUANTIZE_BIAS, DEQUANTIZE_SCALE, RGB_MEAN_OFFSET


class _ReverseWhitening(keras.layers.Layer):
    """Holds the reverse-whitening scale `[rgb_size]` when `reverse_whitening` is set."""

    def __init__(self, *, reverse_whitening: bool = False, rgb_size: int = 1024, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.reverse_whitening = bool(reverse_whitening)
        self.rgb_size = int(rgb_size)
        self.rgb_scale = None
        if self.reverse_whitening:
            self.rgb_scale = self.add_weight(
                shape=(self.rgb_size,), initializer="ones", trainable=False, name="rgb_scale"
            )

    def set_rgb_scale(self, scale) -> None:
        """Sets the scale from `nextvlad.records.reverse_whitening_scale` (float [rgb_size], positive)."""
        scale = np.asarray(scale, dtype=np.float32)
        if self.rgb_scale is None:
            raise ValueError(f"{self.name} was built without reverse_whitening; rebuild with it set")
        if scale.shape != (self.rgb_size,) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(
                f"reverse-whitening scale must be [{self.rgb_size}] positive floats, got shape {scale.shape}"
            )
        self.rgb_scale.assign(scale)

    def _whiten(self, rgb):
        if self.rgb_scale is None:
            return rgb
        return (rgb - RGB_MEAN_OFFSET) * ops.cast(self.rgb_scale, "float32")

    def get_config(self):
        config = super().get_config()
        return {**config, "reverse_whitening": self.reverse_whitening, "rgb_size": self.rgb_size}


@keras.saving.register_keras_serializable(package="nextvlad")
class FramePreprocessing(_ReverseWhitening):
    """uint8 frames → float32 model features, with the frame limit and optional reverse whitening.

    Args:
        max_frames: frames kept per video; later frames are dropped and `num_frames` is clipped to it.
        reverse_whitening: apply the paper's reverse whitening to rgb (the scale is a model weight).
        rgb_size: rgb feature size (1024 for YouTube-8M).

    Call arguments:
        rgb: uint8 `[B, T, rgb_size]`, zero-padded after each video's frames.
        audio: uint8 `[B, T, audio_size]`.
        num_frames: int `[B]`, real frames per video.

    Returns:
        `(rgb float32 [B, T', rgb_size], audio float32 [B, T', audio_size], num_frames int32 [B])` with
        `T' = min(T, max_frames)` and every frame at or after a video's `num_frames` equal to 0.
    """

    def __init__(self, max_frames: int = 300, **kwargs):
        super().__init__(**kwargs)
        if int(max_frames) < 1:
            raise ValueError(f"max_frames={max_frames}; expected a positive number of frames")
        self.max_frames = int(max_frames)

    def call(self, rgb, audio, num_frames):
        rgb = rgb[:, : self.max_frames]
        audio = audio[:, : self.max_frames]
        num_frames = ops.minimum(ops.cast(num_frames, "int32"), self.max_frames)  # [B]
        steps = ops.arange(ops.shape(rgb)[1], dtype="int32")  # [T']
        real = ops.cast(steps[None, :] < num_frames[:, None], "float32")[..., None]  # [B, T', 1]
        rgb = self._whiten(_dequantize(rgb)) * real
        audio = _dequantize(audio) * real
        return rgb, audio, num_frames

    def compute_output_spec(self, rgb, audio, num_frames):
        steps = None if rgb.shape[1] is None else min(rgb.shape[1], self.max_frames)
        return (
            keras.KerasTensor((rgb.shape[0], steps, rgb.shape[2]), dtype="float32"),
            keras.KerasTensor((audio.shape[0], steps, audio.shape[2]), dtype="float32"),
            keras.KerasTensor(num_frames.shape, dtype="int32"),
        )

    def get_config(self):
        return {**super().get_config(), "max_frames": self.max_frames}


@keras.saving.register_keras_serializable(package="nextvlad")
class VideoPreprocessing(_ReverseWhitening):
    """Video-level mean features (already floats in the records), with optional reverse whitening of
    `mean_rgb`. Call arguments: `mean_rgb [B, rgb_size]`, `mean_audio [B, audio_size]`; returns both."""

    def call(self, mean_rgb, mean_audio):
        return self._whiten(ops.cast(mean_rgb, "float32")), ops.cast(mean_audio, "float32")

    def compute_output_spec(self, mean_rgb, mean_audio):
        return (
            keras.KerasTensor(mean_rgb.shape, dtype="float32"),
            keras.KerasTensor(mean_audio.shape, dtype="float32"),
        )


def _dequantize(q):
    return ops.cast(q, "float32") * DEQUANTIZE_SCALE + DEQUANTIZE_BIAS
