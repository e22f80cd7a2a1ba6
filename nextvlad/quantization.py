"""The dataset's feature quantization, and the NeXtVLAD paper's reverse whitening (§3.3): numpy references.

Models do the same inside (`nextvlad.layers.preprocessing`), from the constants defined here.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from nextvlad.files import read_bytes

RGB_SIZE = 1024  # rgb features per frame

# Quantization range used by the dataset's feature extractor.
MIN_QUANTIZED = -2.0
MAX_QUANTIZED = 2.0
DEQUANTIZE_SCALE = (MAX_QUANTIZED - MIN_QUANTIZED) / 255.0  # 4/255
DEQUANTIZE_BIAS = (MAX_QUANTIZED - MIN_QUANTIZED) / 512.0 + MIN_QUANTIZED  # 4/512 - 2
RGB_MEAN_OFFSET = (MAX_QUANTIZED - MIN_QUANTIZED) / 512.0  # 4/512: removed before reverse whitening


def dequantize(q: Any) -> np.ndarray:
    """Map quantized uint8 features back to floats: `x = q * (4/255) + (4/512 - 2)`, in float32.

    This is the dataset's reference reader formula; models do the same inside (`Dequantize` layers).
    """
    return np.asarray(q).astype(np.float32) * np.float32(DEQUANTIZE_SCALE) + np.float32(DEQUANTIZE_BIAS)


def quantize(x: Any) -> np.ndarray:
    """Quantize float features as the dataset's extractor does: `round((clip(x, -2, 2) + 2) * 255/4)`.

    Rounding is half-to-even (`np.rint`), computed in float32. Returns uint8 of the same shape.
    """
    x = np.clip(np.asarray(x, dtype=np.float32), np.float32(MIN_QUANTIZED), np.float32(MAX_QUANTIZED))
    scale = np.float32(255.0 / (MAX_QUANTIZED - MIN_QUANTIZED))
    return np.rint((x - np.float32(MIN_QUANTIZED)) * scale).astype(np.uint8)


def reverse_whitening_scale(eigenvals_path: str) -> np.ndarray:
    """Per-dimension scale that undoes YouTube-8M's PCA whitening of the rgb features.

    Args:
        eigenvals_path: path (local or gs://) of the dataset's `yt8m_pca/eigenvals.npy`, shape (2048, 1)
            or (2048,): the first 1024 rows belong to the rgb features.

    Returns:
        float32 [1024]: `sqrt(eigenvals[:1024]) + 1e-4`.
    """
    eig = np.load(io.BytesIO(read_bytes(eigenvals_path)), allow_pickle=False)
    if not (eig.ndim == 1 or (eig.ndim == 2 and eig.shape[1] == 1)) or eig.shape[0] < RGB_SIZE:
        raise ValueError(
            f"{eigenvals_path} has shape {eig.shape}; expected the YouTube-8M PCA eigenvalues of shape "
            f"(2048, 1) (at least {RGB_SIZE} rows, rgb first). Pass the `yt8m_pca/eigenvals.npy` file."
        )
    eig = eig.reshape(-1)[:RGB_SIZE].astype(np.float64)
    if not np.all(np.isfinite(eig)) or np.any(eig < 0):
        raise ValueError(f"{eigenvals_path} holds negative or non-finite eigenvalues; is it the right file?")
    return (np.sqrt(eig) + 1e-4).astype(np.float32)


def reverse_whiten(rgb: Any, scale: Any) -> np.ndarray:
    """Reverse whitening of dequantized rgb features, `(rgb - 4/512) * scale` (numpy reference)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    return (rgb - np.float32(RGB_MEAN_OFFSET)) * np.asarray(scale, dtype=np.float32)
