"""Decode a video file as YouTube-8M did: one frame per second of presentation time, plus 16 kHz mono audio.

For every whole second `s = 0, 1, 2, ...` of the video (up to `max_frames` seconds) the frame *shown* at
time `s` is taken: the last frame whose presentation timestamp is at or before `s` (the first frame when
the video starts a little after 0). A video covers the seconds before the end of its last frame, so a
0.4 s clip gives 1 frame and a 7.5 s clip 8 (a second
counts when the video lasts 10 ms into it). Timestamps are read from the stream, so variable frame rate
needs no special case. The display rotation of the stream (e.g. phone videos) is applied, as the FFmpeg
command line does, and each chosen frame is scaled straight from the decoder's picture to the backbone's
input size (no aspect-ratio padding, as the dataset's extractor), so only one full-resolution frame is
ever held.

Decoding is the CPU cost of extraction, so two FFmpeg features are used where they cannot change the
result: frame threading, and skipping the decode of *non-reference* frames that no whole second shows
(the decision is made per packet from the timestamps of the packets around it; a reference frame is
always decoded, because later frames depend on it).

Errors are `VideoDecodeError`s with a `reason` slug from `DECODE_REASONS`, so that a pipeline can send
each bad input to its dead letter with a reason of its own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections import deque
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # VGGish's input rate (Hz)

DECODE_REASONS = (
    "empty_file",  # zero bytes
    "unreadable",  # the path cannot be opened or read
    "not_a_video",  # FFmpeg recognises no container in the bytes
    "truncated",  # a video container, but cut short or damaged (e.g. an mp4 whose index is missing)
    "no_video_stream",  # a container without a video stream (e.g. audio only)
    "decode_error",  # the stream fails part-way through decoding
    "no_frames",  # a video stream that yields no frame at all
)

# A whole second counts when the video lasts at least this far into it: container timestamps are often
# rounded to the millisecond, so a 10 s clip may end at 10.0003 s.
_END_TOLERANCE = 0.01

# How many packets (in decode order) a frame's successor in presentation order can lie away: codecs
# reorder at most 16 frames (H.264's max_num_reorder_frames), so 32 is a safe lookahead.
_REORDER_WINDOW = 32

# Signatures of video containers: bytes that open with one of these but that FFmpeg cannot read are a
# damaged video, not some other kind of file.
_CONTAINER_MAGIC = (
    (4, (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")),  # ISO BMFF: mp4, mov, m4v, 3gp
    (0, (b"\x1a\x45\xdf\xa3",)),  # EBML: webm, mkv
    (0, (b"RIFF",)),  # avi
    (0, (b"FLV",)),
    (0, (b"OggS",)),
    (0, (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")),  # MPEG program stream / elementary video
    (0, (b"\x30\x26\xb2\x75",)),  # ASF / wmv
)


class VideoDecodeError(ValueError):
    """A video file that cannot be turned into frames.

    Attributes:
        reason: a slug from `DECODE_REASONS`, for counting dead letters.
        message: what went wrong, with the file's name.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{message} [reason: {reason}]")

    def __reduce__(self):
        # Keyword-only init args would break the default exception pickling that Beam relies on.
        return (functools.partial(VideoDecodeError, reason=self.reason), (self.message,))


@dataclasses.dataclass
class DecodedVideo:
    """One video, sampled at one frame per second."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB: the frame shown at second t, scaled to the backbone size
    source_times: np.ndarray  # float64 [T]: presentation time (s from the first frame) of each chosen frame
    duration: float  # seconds the decoded frames cover (end of the last frame), before the max_frames cut
    audio: np.ndarray | None  # float32 [T * 16000] mono waveform in [-1, 1], from second 0; None: not decoded
    has_audio: bool  # the container has an audio stream (decoded or not)
    width: int  # coded picture size, before rotation
    height: int
    rotation: int  # display rotation applied, degrees counter-clockwise (0, 90, 180, 270)
    frames_decoded: int  # pictures the decoder produced (skipped non-reference frames excluded)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _looks_like_video(head: bytes) -> bool:
    return any(head[offset : offset + len(m)] == m for offset, magics in _CONTAINER_MAGIC for m in magics)


def _open(source: str | BinaryIO, name: str, head: bytes) -> Any:
    import av

    try:
        return av.open(source, mode="r")
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise VideoDecodeError(f"{name}: cannot be read ({e})", reason="unreadable") from None
    except av.error.FFmpegError as e:
        if _looks_like_video(head):
            raise VideoDecodeError(
                f"{name}: a video container that FFmpeg cannot open ({e}); the file is truncated or damaged",
                reason="truncated",
            ) from None
        raise VideoDecodeError(
            f"{name}: not a video file FFmpeg can read ({e})", reason="not_a_video"
        ) from None


def _read_head(source: str | BinaryIO, name: str) -> bytes:
    """The first bytes, to tell an empty file, an unreadable path and a damaged video apart."""
    try:
        if isinstance(source, str):
            with open(source, "rb") as f:
                head = f.read(16)
        else:
            head = source.read(16)
            source.seek(0)
    except OSError as e:
        raise VideoDecodeError(f"{name}: cannot be read ({e})", reason="unreadable") from None
    if not head:
        raise VideoDecodeError(f"{name}: the file is empty (0 bytes)", reason="empty_file")
    return head


def _rotation(frame: Any) -> int:
    degrees = int(round(float(getattr(frame, "rotation", 0) or 0))) % 360
    return degrees if degrees in (0, 90, 180, 270) else 0


def _to_rgb(frame: Any, size: tuple[int, int], rotation: int) -> np.ndarray:
    """One decoded frame → uint8 [H, W, 3], scaled straight from the decoder's picture, then rotated."""
    height, width = size
    if rotation in (90, 270):
        height, width = width, height  # scale first, so the rotated picture has the requested size
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()
    # FFmpeg's display rotation is counter-clockwise, as np.rot90 (and as `ffmpeg -i` shows it).
    return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb


class _PacketSelector:
    """Decides, per video packet in decode order, whether some whole second shows its frame.

    A frame at time t whose successor (in presentation order) starts at t' is shown at the whole seconds
    in [t, t'). Packets are held back `_REORDER_WINDOW` packets so that t' is known when deciding.
    """

    def __init__(self, origin: int | None, time_base: float, max_frames: int) -> None:
        self._origin = origin
        self._time_base = time_base
        self._max_frames = max_frames
        self._pending: deque[Any] = deque()
        self._recent: deque[float] = deque(maxlen=3 * _REORDER_WINDOW)
        self._first_time: float | None = None

    def _time(self, packet: Any) -> float | None:
        if packet.pts is None or self._origin is None:
            return None
        return (packet.pts - self._origin) * self._time_base

    def push(self, packet: Any) -> Iterator[tuple[Any, bool]]:
        self._pending.append(packet)
        t = self._time(packet)
        if t is not None:
            self._recent.append(t)
        while len(self._pending) > _REORDER_WINDOW:
            yield self._decide(self._pending.popleft(), final=False)

    def drain(self) -> Iterator[tuple[Any, bool]]:
        while self._pending:
            yield self._decide(self._pending.popleft(), final=True)

    def _decide(self, packet: Any, *, final: bool) -> tuple[Any, bool]:
        t = self._time(packet)
        if t is None:
            return packet, True
        if self._first_time is None or t < self._first_time:
            self._first_time = t
            return packet, True  # the earliest frame so far may be the one shown at second 0
        later = [u for u in self._recent if u > t]
        if not later:
            return packet, True  # the last frame (or one whose successor is unknown): keep it
        shown_from = max(0, math.ceil(t))  # first whole second at or after t
        return packet, shown_from < min(later) and shown_from < self._max_frames


def _stream_origin(stream: Any) -> int | None:
    return stream.start_time if stream.start_time is not None else None


def decode_video(
    source: str | BinaryIO,
    *,
    image_size: tuple[int, int] = (299, 299),
    max_frames: int = 300,
    with_audio: bool = True,
    skip_unshown: bool = True,
    threads: int = 0,
    name: str | None = None,
) -> DecodedVideo:
    """Decodes one frame per second of `source` and (optionally) its audio at 16 kHz mono.

    Args:
        source: a local path, or a seekable binary file object (e.g. from Beam's `FileSystems.open`).
        image_size: (height, width) of the returned frames.
        max_frames: seconds kept from the start; decoding stops after them.
        with_audio: decode the first audio stream (if any) into `audio`.
        skip_unshown: skip decoding non-reference frames that no whole second shows (same result, faster).
        threads: decoder threads (0: FFmpeg chooses, one per core).
        name: the file's name for messages (default: `source` itself).

    Returns:
        The frames, their source times, the covered duration and the audio.

    Raises:
        VideoDecodeError: the file is empty, unreadable, not a video, truncated, has no video stream, fails
            while decoding or yields no frame; `.reason` says which.
    """
    import av

    if max_frames < 1:
        raise ValueError(f"max_frames={max_frames}; expected a positive number of seconds")
    name = name or (source if isinstance(source, str) else getattr(source, "name", "<stream>"))
    head = _read_head(source, name)
    container = _open(source, name, head)
    try:
        return _decode(
            container,
            name,
            image_size,
            max_frames,
            with_audio,
            skip_unshown,
            threads,
            _looks_like_video(head),
        )
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"{name}: decoding failed part-way ({e})", reason="decode_error") from None
    finally:
        container.close()


def _decode(
    container: Any,
    name: str,
    image_size: tuple[int, int],
    max_frames: int,
    with_audio: bool,
    skip_unshown: bool,
    threads: int,
    looks_like_video: bool,
) -> DecodedVideo:
    if not container.streams:
        # An mp4 cut before its index (PyAV and many tools write it at the end) opens with no streams.
        raise VideoDecodeError(
            f"{name}: the container lists no streams at all; the file is truncated or damaged",
            reason="truncated" if looks_like_video else "not_a_video",
        )
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams)
        raise VideoDecodeError(
            f"{name}: the container has no video stream ({kinds})", reason="no_video_stream"
        )
    video = container.streams.video[0]
    video.thread_type = "AUTO"  # frame and slice threads
    video.thread_count = threads
    audio_stream = container.streams.audio[0] if with_audio and container.streams.audio else None
    time_base = float(video.time_base)
    origin = _stream_origin(video)
    selector = _PacketSelector(origin, time_base, max_frames) if skip_unshown else None
    origin_seconds = (origin or 0) * time_base
    audio = _AudioCollector(audio_stream, origin_seconds) if audio_stream is not None else None

    frames: list[np.ndarray] = []
    source_times: list[float] = []
    held: Any = None  # the latest decoded frame at or before the next second: the only full-size frame kept
    held_time = 0.0
    held_rgb: np.ndarray | None = None
    rotation = 0
    decoded = 0
    end_time = 0.0
    video_done = False

    def emit(frame: Any, t: float) -> None:
        nonlocal held_rgb
        if held_rgb is None:
            held_rgb = _to_rgb(frame, image_size, rotation)
        frames.append(held_rgb)
        source_times.append(t)

    def take(frame: Any) -> None:
        nonlocal held, held_time, held_rgb, rotation, decoded, end_time, video_done, origin
        decoded += 1
        if origin is None:
            origin = frame.pts if frame.pts is not None else 0
        if decoded == 1:
            rotation = _rotation(frame)
        if frame.pts is not None:
            t = (frame.pts - origin) * time_base
        else:  # no timestamp: assume the nominal rate after the previous frame
            t = held_time + 1.0 / float(video.average_rate or 25)
        duration = (frame.duration or 0) * time_base or 1.0 / float(video.average_rate or 25)
        # Every whole second before t shows the held frame; before the first frame, this one.
        while len(frames) < max_frames and len(frames) < t:
            if held is None:
                held, held_time, held_rgb = frame, t, None
            emit(held, held_time)
        if len(frames) >= max_frames:
            video_done = True
            return
        if held is not frame:
            held, held_time, held_rgb = frame, t, None
        end_time = max(end_time, t + duration)

    def decode_packet(packet: Any, needed: bool) -> None:
        if video_done:
            return
        if selector is not None:
            video.codec_context.skip_frame = "DEFAULT" if needed else "NONREF"
        for frame in packet.decode():
            take(frame)
            if video_done:
                return

    streams = [video] if audio_stream is None else [video, audio_stream]
    flushed = False
    for packet in container.demux(*streams):
        if packet.stream.type == "audio":
            audio.add(packet)
            if video_done and audio.covers(max_frames):
                break
            continue
        if video_done:
            if audio is None:
                break
            continue
        if packet.size == 0 and packet.pts is None:
            # PyAV's empty packet at the end of the stream: decoding it flushes the decoder.
            for p, needed in selector.drain() if selector else ():
                decode_packet(p, needed)
            decode_packet(packet, True)
            flushed = True
        elif selector is None:
            decode_packet(packet, True)
        else:
            for p, needed in selector.push(packet):
                decode_packet(p, needed)
    if not (flushed or video_done):
        for p, needed in selector.drain() if selector else ():
            decode_packet(p, needed)
    if decoded == 0:
        raise VideoDecodeError(f"{name}: the video stream yields no frame", reason="no_frames")
    # The seconds up to the end of the last frame show the last frame.
    while len(frames) < max_frames and len(frames) < max(1, math.ceil(end_time - _END_TOLERANCE)):
        emit(held, held_time)
    _check_complete(video, container, name, end_time, len(frames), max_frames)
    num = len(frames)
    return DecodedVideo(
        frames=np.stack(frames),
        source_times=np.asarray(source_times, dtype=np.float64),
        duration=end_time,
        audio=audio.waveform(num) if audio is not None else None,
        has_audio=bool(container.streams.audio),
        width=int(video.codec_context.width),
        height=int(video.codec_context.height),
        rotation=rotation,
        frames_decoded=decoded,
    )


def _check_complete(
    video: Any, container: Any, name: str, end_time: float, num: int, max_frames: int
) -> None:
    """A stream that ends well before the duration its container declares was cut short."""
    if num >= max_frames:
        return
    declared = None
    if video.duration is not None:
        declared = video.duration * float(video.time_base)
    elif container.duration is not None:
        declared = container.duration / 1_000_000
    if declared is not None and end_time < declared - max(1.0, 0.05 * declared):
        raise VideoDecodeError(
            f"{name}: frames stop at {end_time:.1f}s but the container declares {declared:.1f}s; the file "
            "is truncated",
            reason="truncated",
        )


class _AudioCollector:
    """Decodes one audio stream to 16 kHz mono float32, placed on the video's time axis."""

    def __init__(self, stream: Any, origin: float) -> None:
        import av

        self._stream = stream
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._chunks: list[np.ndarray] = []
        self._start: float | None = None  # seconds, first sample's time on the stream's axis
        self._samples = 0
        self._origin = origin  # seconds: the video's first frame, which is second 0

    def add(self, packet: Any) -> None:
        for frame in packet.decode():
            if self._start is None:
                self._start = float(frame.time) if frame.time is not None else self._origin
            for out in self._resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                self._chunks.append(chunk)
                self._samples += chunk.size

    def covers(self, seconds: int) -> bool:
        return self._start is not None and self._start + self._samples / SAMPLE_RATE >= seconds

    def waveform(self, seconds: int) -> np.ndarray:
        """float32 [seconds * 16000]: silence where the stream has no samples."""
        for out in self._resampler.resample(None):
            self._chunks.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        total = seconds * SAMPLE_RATE
        out = np.zeros(total, dtype=np.float32)
        if not self._chunks:
            return out
        data = np.concatenate(self._chunks)
        offset = int(round(((self._start or 0.0) - self._origin) * SAMPLE_RATE))
        if offset < 0:
            data, offset = data[-offset:], 0
        data = data[: max(0, total - offset)]
        out[offset : offset + data.size] = data
        return out
