"""The VGGish log-mel front end: 16 kHz mono audio → one [96, 64] log-mel patch per second of video.

VGGish (Hershey et al., ICASSP 2017; `vggish_input.py` / `mel_features.py` of its release) computes a
spectrogram with 25 ms periodic-Hann windows every 10 ms (512-point FFT magnitudes), maps it to 64 mel
bands between 125 and 7500 Hz (HTK mel scale, triangular filters, DC bin zeroed), takes `log(mel + 0.01)`,
and cuts 0.96 s patches of 96 rows. YouTube-8M has one audio feature per second of video, so the patch
for second t here starts at t seconds (rows 100·t .. 100·t + 95); audio missing at the end is silence.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_SECONDS = 0.96

WINDOW = int(round(SAMPLE_RATE * WINDOW_SECONDS))  # 400 samples
HOP = int(round(SAMPLE_RATE * HOP_SECONDS))  # 160 samples
FFT_LENGTH = 2 ** int(np.ceil(np.log2(WINDOW)))  # 512
PATCH_FRAMES = int(round(PATCH_SECONDS / HOP_SECONDS))  # 96 spectrogram rows per patch
ROWS_PER_SECOND = int(round(1.0 / HOP_SECONDS))  # 100


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale: `1127 · ln(1 + f / 700)`."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


def mel_matrix(
    *,
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """float64 [num_spectrogram_bins, num_mel_bins]: triangular filters, equally spaced on the mel scale."""
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins))  # [S]
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_mel_bins + 2)  # [M + 2]
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # [M] each
    rising = (bins_mel[:, None] - lower) / (center - lower)  # [S, M]
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the DC bin carries no band
    return weights


_MEL = mel_matrix().astype(np.float32)  # [257, 64]
# Periodic Hann window (the window of a length-N DFT, not the symmetric one).
_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)).astype(np.float32)


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """float32 [F, 64] log-mel rows, one per 10 ms hop: F = 1 + (len − 400) // 160 (0 if shorter)."""
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if waveform.size < WINDOW:
        return np.zeros((0, NUM_MEL_BINS), dtype=np.float32)
    num = 1 + (waveform.size - WINDOW) // HOP
    frames = np.lib.stride_tricks.as_strided(
        waveform, shape=(num, WINDOW), strides=(waveform.strides[0] * HOP, waveform.strides[0])
    )  # [F, 400], a view
    magnitude = np.abs(np.fft.rfft(frames * _HANN, n=FFT_LENGTH)).astype(np.float32)  # [F, 257]
    return np.log(magnitude @ _MEL + LOG_OFFSET)


def log_mel_patches(waveform: np.ndarray, num_seconds: int) -> np.ndarray:
    """float32 [num_seconds, 96, 64]: the VGGish input patch starting at each whole second.

    Args:
        waveform: 16 kHz mono samples in [-1, 1], sample 0 at second 0 of the video.
        num_seconds: patches wanted (the video's frame count); audio beyond the waveform is silence.
    """
    needed = num_seconds * SAMPLE_RATE
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)[:needed]
    if waveform.size < needed:
        waveform = np.pad(waveform, (0, needed - waveform.size))
    rows = log_mel_spectrogram(waveform)  # [100 · T − 2, 64]
    starts = np.arange(num_seconds) * ROWS_PER_SECOND
    if not num_seconds:
        return np.zeros((0, PATCH_FRAMES, NUM_MEL_BINS), dtype=np.float32)
    return np.stack([rows[s : s + PATCH_FRAMES] for s in starts])
