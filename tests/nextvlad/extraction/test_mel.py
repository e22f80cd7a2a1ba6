"""The VGGish log-mel front end against a direct, loop-by-loop reading of its definition."""

import math

import numpy as np

from nextvlad.extraction.mel import log_mel_patches


def _reference_log_mel(waveform):
    """VGGish's definition written out: 25 ms periodic-Hann frames every 10 ms, |DFT| over 512 points, 64
    triangular HTK-mel bands on 125-7500 Hz (DC bin excluded), log(mel + 0.01)."""
    rate, window, hop, nfft, bands = 16000, 400, 160, 512, 64

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(125.0), mel(7500.0)
    edges = [lo + (hi - lo) * i / (bands + 1) for i in range(bands + 2)]
    bin_mels = [mel(k * (rate / 2) / (nfft // 2)) for k in range(nfft // 2 + 1)]
    weights = np.zeros((nfft // 2 + 1, bands))
    for b in range(bands):
        left, centre, right = edges[b], edges[b + 1], edges[b + 2]
        for k in range(1, nfft // 2 + 1):
            m = bin_mels[k]
            if left < m <= centre:
                weights[k, b] = (m - left) / (centre - left)
            elif centre < m < right:
                weights[k, b] = (right - m) / (right - centre)
    hann = [0.5 - 0.5 * math.cos(2 * math.pi * n / window) for n in range(window)]
    dft = np.exp(-2j * np.pi * np.outer(np.arange(nfft // 2 + 1), np.arange(window)) / nfft)  # zero-padded
    rows = []
    for start in range(0, len(waveform) - window + 1, hop):
        frame = np.array([waveform[start + n] * hann[n] for n in range(window)])
        rows.append(np.log(np.abs(dft @ frame) @ weights + 0.01))
    return np.array(rows)


def test_patches_match_the_definition_one_per_second():
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    waveform = (0.3 * np.sin(2 * np.pi * (200 + 600 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    patches = log_mel_patches(waveform, 3)
    assert patches.shape == (3, 96, 64) and patches.dtype == np.float32
    reference = _reference_log_mel(waveform.astype(np.float64))
    for second in range(3):  # the patch of second s starts at s seconds: row 100 s
        np.testing.assert_allclose(patches[second], reference[100 * second : 100 * second + 96], atol=2e-3)


def test_a_pure_tone_peaks_in_the_band_around_its_frequency():
    t = np.arange(16000) / 16000
    patch = log_mel_patches(np.sin(2 * np.pi * 1000 * t), 1)[0]  # [96, 64]
    centres = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)[1:-1]
    expected_band = int(np.argmin(np.abs(centres - 1127 * np.log1p(1000 / 700))))
    assert np.argmax(patch.mean(axis=0)) == expected_band


def test_missing_audio_at_the_end_is_silence():
    patches = log_mel_patches(np.zeros(16000, np.float32), 2)  # one second of audio for a 2 s video
    assert patches.shape == (2, 96, 64)
    np.testing.assert_allclose(patches[1], np.log(0.01), rtol=1e-6)
