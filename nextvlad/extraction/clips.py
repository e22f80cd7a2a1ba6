"""Small generated video clips (PyAV encoders, no downloads) for tests, the demo and the benchmarks.

`write_clip` encodes pictures drawn by a function of time into H.264/mp4 or VP9/webm, at a constant
frame rate or at given (variable) timestamps, optionally with a sine tone. `timestamp_picture` draws
a frame that encodes a whole number as a grid of black and white blocks, which survives lossy coding,
so that a test can tell which second of the source a decoded frame came from.
"""

from __future__ import annotations

import fractions
import logging
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

CODECS = {".mp4": ("libx264", "aac"), ".webm": ("libvpx-vp9", "libopus"), ".mkv": ("libx264", "aac")}
AUDIO_RATE = 48000
GRID = 4  # timestamp_picture: GRID x GRID blocks, one bit each


def timestamp_picture(code: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """uint8 [H, W, 3]: `code` (0 <= code < 2**16) as a 4 x 4 grid of white (1) / black (0) blocks.

    Block i (row-major) is white when bit i of `code` is set.
    """
    if not 0 <= code < 2 ** (GRID * GRID):
        raise ValueError(f"code={code}; a {GRID}x{GRID} grid holds 0 <= code < {2 ** (GRID * GRID)}")
    height, width = size
    bits = np.array([(code >> i) & 1 for i in range(GRID * GRID)], dtype=np.uint8).reshape(GRID, GRID)
    rows = (np.arange(height) * GRID) // height
    cols = (np.arange(width) * GRID) // width
    plane = bits[rows][:, cols] * 255  # [H, W]
    return np.repeat(plane[:, :, None], 3, axis=2)


def read_timestamp_picture(image: np.ndarray) -> int:
    """The code a (decoded, possibly blurred) `timestamp_picture` shows: each block's mean vs mid-grey."""
    image = np.asarray(image, dtype=np.float32).mean(axis=2)  # [H, W]
    height, width = image.shape
    code = 0
    for i in range(GRID * GRID):
        r, c = divmod(i, GRID)
        # The block's centre half: edges blur into the neighbours under lossy coding and scaling.
        top, bottom = (4 * r + 1) * height // (4 * GRID), (4 * r + 3) * height // (4 * GRID)
        left, right = (4 * c + 1) * width // (4 * GRID), (4 * c + 3) * width // (4 * GRID)
        if image[top : max(bottom, top + 1), left : max(right, left + 1)].mean() > 127.5:
            code |= 1 << i
    return code


def class_picture(
    label: int, num_classes: int, *, size: tuple[int, int] = (32, 32)
) -> Callable[[float], np.ndarray]:
    """A picture function for a clip of class `label`: a class colour with a white square moving each second.

    The colour runs from dark red-green to bright red over the classes, so even a network that only sees
    the red channel can tell the classes apart; the square makes every second different.
    """
    if not 0 <= label < num_classes:
        raise ValueError(f"label={label}; expected 0 <= label < {num_classes}")
    height, width = size
    share = label / max(1, num_classes - 1)
    colour = np.array([30 + 200 * share, 200 - 150 * share, 90], dtype=np.uint8)
    side = max(1, min(height, width) // 4)

    def draw(t: float) -> np.ndarray:
        image = np.empty((height, width, 3), dtype=np.uint8)
        image[:] = colour
        second = int(t)
        top, left = (3 * second) % (height - side + 1), (7 * second) % (width - side + 1)
        image[top : top + side, left : left + side] = 255
        return image

    return draw


def write_clip(
    path: str,
    *,
    duration: float | None = None,
    fps: float = 2.0,
    picture: Callable[[float], np.ndarray] | None = None,
    size: tuple[int, int] = (32, 32),
    frame_times: Sequence[float] | None = None,
    tone_hz: float | None = None,
    rotation: int = 0,
    codec: str | None = None,
    options: dict[str, str] | None = None,
) -> list[float]:
    """Encodes a clip whose frame at time t is `picture(t)`.

    Args:
        path: output file; `.mp4` / `.mkv` (H.264 + AAC) or `.webm` (VP9 + Opus).
        duration: seconds of video at a constant `fps` (a whole number of frames: 7.5 s at 2 fps is 15).
        fps: frame rate; with `frame_times` the stream's nominal rate, which is how long the last frame
            lasts (encoders give the last frame the nominal frame duration).
        picture: t (seconds) -> uint8 [H, W, 3]; default: `timestamp_picture(int(t))`.
        size: (height, width).
        frame_times: explicit presentation times in seconds (variable frame rate), increasing, first 0;
            the clip then lasts `frame_times[-1] + 1 / fps`.
        tone_hz: add a mono sine tone of this frequency for the whole clip.
        rotation: display rotation metadata, degrees counter-clockwise.
        codec: video encoder name (default by extension).
        options: encoder options (e.g. `{"preset": "veryfast"}`).

    Returns:
        The presentation times of the frames written.
    """
    import av

    suffix = path[path.rfind(".") :]
    if suffix not in CODECS:
        raise ValueError(f"{path}: unknown clip container {suffix!r}; use one of {sorted(CODECS)}")
    video_codec, audio_codec = CODECS[suffix]
    height, width = size
    picture = picture or (lambda t: timestamp_picture(int(t), size))
    if frame_times is None:
        if duration is None or abs(duration * fps - round(duration * fps)) > 1e-6 or duration <= 0:
            raise ValueError(f"duration={duration} at fps={fps} is not a whole number of frames")
        frame_times = [i / fps for i in range(int(round(duration * fps)))]
    times = [float(t) for t in frame_times]
    duration = times[-1] + 1.0 / fps
    # Millisecond timestamps express any frame timing the tests need, constant or variable.
    time_base = fractions.Fraction(1, 1000)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(
            codec or video_codec, rate=fractions.Fraction(fps).limit_denominator(1000)
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base
        if options:
            stream.options = dict(options)
        if rotation:
            stream.set_display_rotation(rotation)
        audio = None
        if tone_hz is not None:
            audio = container.add_stream(audio_codec, rate=AUDIO_RATE)
            audio.layout = "mono"
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture(t)), format="rgb24")
            frame.pts = int(round(t * 1000))
            frame.time_base = time_base
            end = times[i + 1] if i + 1 < len(times) else duration
            frame.duration = max(1, int(round((end - t) * 1000)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio is not None:
            _write_tone(container, audio, duration, tone_hz)
    return times


def _write_tone(container, stream, duration: float, tone_hz: float) -> None:
    import av

    samples = int(round(duration * AUDIO_RATE))
    wave = (0.5 * np.sin(2 * np.pi * tone_hz * np.arange(samples) / AUDIO_RATE)).astype(np.float32)
    chunk = 960  # 20 ms: a frame size every audio encoder accepts
    for start in range(0, samples, chunk):
        part = wave[start : start + chunk]
        frame = av.AudioFrame.from_ndarray(part[None, :], format="flt", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
