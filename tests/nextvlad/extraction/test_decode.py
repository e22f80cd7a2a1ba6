"""Decoding at one frame per second: which source frame each second shows, audio, rotation, bad files.

Every clip is made here with PyAV; each frame draws the index of its source frame as a block pattern
(`timestamp_picture`), so the test reads back which source frame a decoded frame came from.
"""

import os
import subprocess

import numpy as np
import pytest
from extraction_helpers import write_audio_only

from nextvlad.extraction.clips import read_timestamp_picture, timestamp_picture, write_clip
from nextvlad.extraction.decode import DECODE_REASONS, VideoDecodeError, decode_video


def _indexed_clip(path, times, **kwargs):
    """A clip whose frame at times[i] shows the code i."""
    index = {round(t, 6): i for i, t in enumerate(times)}
    write_clip(
        str(path), frame_times=times, picture=lambda t: timestamp_picture(index[round(t, 6)]), **kwargs
    )
    return path


def _codes(decoded):
    return [read_timestamp_picture(frame) for frame in decoded.frames]


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
@pytest.mark.parametrize(
    ("seconds", "fps", "expected_frames"),
    [(7.5, 2, 8), (0.4, 5, 1), (400, 1, 300)],
    ids=["7.5s", "0.4s", "400s-capped"],
)
def test_constant_frame_rate_gives_the_frame_shown_at_each_whole_second(
    tmp_path, suffix, seconds, fps, expected_frames
):
    # Frame i is shown from i/fps: the frame on screen at second s is number s * fps.
    times = [i / fps for i in range(int(round(seconds * fps)))]
    clip = _indexed_clip(tmp_path / f"clip{suffix}", times, fps=fps)
    decoded = decode_video(str(clip), image_size=(32, 32))
    assert decoded.num_frames == expected_frames
    assert _codes(decoded) == [s * fps for s in range(expected_frames)]
    np.testing.assert_allclose(decoded.source_times, np.arange(expected_frames), atol=1e-3)
    assert decoded.frames.shape == (expected_frames, 32, 32, 3) and decoded.frames.dtype == np.uint8


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_variable_frame_rate_uses_presentation_timestamps(tmp_path, suffix):
    times = [0.0, 0.3, 0.35, 1.9, 2.0, 2.05, 4.5, 5.5]  # the last frame lasts 1/4 s: the clip ends at 5.75
    clip = _indexed_clip(tmp_path / f"vfr{suffix}", times, fps=4)
    decoded = decode_video(str(clip), image_size=(32, 32))
    # Second 0: frame 0; 1: frame 2 (t=0.35); 2: frame 4 (t=2.0); 3 and 4: frame 5 (2.05); 5: frame 6 (4.5).
    # The frame at 5.5 is shown at no whole second.
    assert _codes(decoded) == [0, 2, 4, 5, 5, 6]
    np.testing.assert_allclose(decoded.source_times, [0, 0.35, 2.0, 2.05, 2.05, 4.5], atol=1e-3)


def test_skipping_unshown_frames_keeps_every_chosen_frame(tmp_path):
    # 30 fps H.264 with B-frames: most frames are never shown at a whole second.
    clip = _indexed_clip(tmp_path / "b.mp4", [i / 30 for i in range(300)], fps=30, size=(48, 64))
    fast = decode_video(str(clip), image_size=(32, 32))
    full = decode_video(str(clip), image_size=(32, 32), skip_unshown=False)
    assert _codes(fast) == _codes(full) == [30 * s for s in range(10)]
    np.testing.assert_array_equal(fast.frames, full.frames)
    assert full.frames_decoded == 300
    assert fast.frames_decoded < 250  # non-reference frames were skipped


def test_max_frames_stops_after_that_many_seconds(tmp_path):
    clip = _indexed_clip(tmp_path / "long.mp4", [float(i) for i in range(20)], fps=1)
    decoded = decode_video(str(clip), image_size=(32, 32), max_frames=5)
    assert _codes(decoded) == [0, 1, 2, 3, 4]


def test_audio_is_16khz_mono_and_holds_the_tone(tmp_path):
    clip = tmp_path / "tone.mp4"
    write_clip(str(clip), duration=3.0, fps=2, tone_hz=1000)
    decoded = decode_video(str(clip), image_size=(32, 32))
    assert decoded.has_audio and decoded.audio.shape == (3 * 16000,)
    middle = decoded.audio[16000:32000]
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=2)  # 1 Hz per bin over one second
    assert 0.3 < np.sqrt(np.mean(middle**2)) < 0.4  # a 0.5-amplitude sine has RMS 0.354


def test_a_video_without_audio_has_no_waveform(tmp_path):
    clip = tmp_path / "silent.webm"
    write_clip(str(clip), duration=2.0, fps=2)
    decoded = decode_video(str(clip), image_size=(32, 32))
    assert not decoded.has_audio and decoded.audio is None


def test_rotation_metadata_is_applied_as_the_ffmpeg_command_line_does(tmp_path):
    import imageio_ffmpeg

    corner = np.zeros((48, 64, 3), np.uint8)
    corner[:12, :16] = 255  # the top-left corner is white
    clip = tmp_path / "rotated.mp4"
    write_clip(str(clip), duration=1.0, fps=2, size=(48, 64), picture=lambda t: corner, rotation=90)
    decoded = decode_video(str(clip), image_size=(64, 48))
    assert decoded.rotation == 90
    # The reference: the FFmpeg command line's own (auto-rotated) first frame.
    raw = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(clip), "-frames:v", "1"]
        + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(64, 48, 3)
    ours = decoded.frames[0].astype(int)
    assert ours.shape == reference.shape
    assert np.mean(np.abs(ours - reference.astype(int)) > 64) < 0.02  # same picture, same orientation
    assert ours[60, 4, 0] > 200 and ours[4, 4, 0] < 50  # 90° counter-clockwise: top-left went bottom-left


def test_odd_frame_sizes_decode(tmp_path):
    clip = tmp_path / "odd.webm"
    write_clip(str(clip), duration=2.0, fps=2, size=(17, 33))
    decoded = decode_video(str(clip), image_size=(32, 32))
    assert (decoded.height, decoded.width) == (17, 33) and decoded.num_frames == 2


def _bad_inputs(tmp_path):
    good = tmp_path / "good.mp4"
    write_clip(str(good), duration=4.0, fps=2)
    data = good.read_bytes()
    cases = {}
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty_file"] = tmp_path / "empty.mp4"
    (tmp_path / "notes.mp4").write_text("these are meeting notes, not a video\n" * 20)
    cases["not_a_video"] = tmp_path / "notes.mp4"
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # PyAV writes the index at the end
    cases["truncated"] = tmp_path / "cut.mp4"
    audio_only = write_audio_only(tmp_path / "voice.mp4")
    cases["no_video_stream"] = audio_only
    (tmp_path / "folder.mp4").mkdir()
    cases["unreadable"] = tmp_path / "folder.mp4"
    noisy = tmp_path / "damaged.mp4"  # intact index, garbage in the middle of the coded frames
    write_clip(str(noisy), duration=6.0, fps=5, size=(64, 64), picture=_noise)
    damaged = bytearray(noisy.read_bytes())
    size = len(damaged)
    damaged[size // 3 : size // 3 + size // 4] = (
        np.random.default_rng(1).integers(0, 256, size // 4, np.uint8).tobytes()
    )
    noisy.write_bytes(bytes(damaged))
    cases["decode_error"] = noisy
    cases["no_frames"] = _frameless_avi(tmp_path / "frameless.avi")
    return cases


def _frameless_avi(path):
    """An AVI with a video stream header and no frame: PyAV writes no header unless a packet is muxed,
    so the FFmpeg command line makes it (`-frames:v 0`)."""
    import imageio_ffmpeg

    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "color=s=32x32:r=5:d=1"]
        + ["-frames:v", "0", "-c:v", "mpeg4", str(path)],
        check=True,
    )
    return path


def _noise(t):
    return np.random.default_rng(int(t * 5)).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_every_bad_input_kind_has_its_own_reason(tmp_path):
    cases = _bad_inputs(tmp_path)
    assert set(cases) == set(DECODE_REASONS)  # a new reason needs a case here
    for reason, path in cases.items():
        with pytest.raises(VideoDecodeError) as error:
            decode_video(str(path))
        assert error.value.reason == reason, (path, error.value)
        assert os.path.basename(str(path)) in str(error.value)


def test_a_missing_file_is_unreadable(tmp_path):
    with pytest.raises(VideoDecodeError, match="cannot be read") as error:
        decode_video(str(tmp_path / "gone.mp4"))
    assert error.value.reason == "unreadable"


def test_a_file_object_decodes_like_its_path(tmp_path):
    clip = _indexed_clip(tmp_path / "clip.webm", [i / 2 for i in range(8)], fps=2)
    with open(clip, "rb") as handle:
        decoded = decode_video(handle, image_size=(32, 32), name=str(clip))
    assert _codes(decoded) == [0, 2, 4, 6]
