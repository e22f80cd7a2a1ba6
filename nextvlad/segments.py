"""Segments of a video, as in the YouTube-8M 2019 segment task: windows, model inputs, ratings, rankings.

A segment is `length` consecutive frames from a start frame; YouTube-8M samples one frame per second, so
a start frame is also a start time in seconds. The 2019 release rates 5-frame segments starting at
multiples of 5. A video is covered by the segments starting at 0, stride, 2·stride, ... while the start
lies inside the video; the last one holds whatever frames are left, so it may be shorter than `length`
(the starter code's `inference.py` cuts videos the same way: a 300-frame video has 60 segments, a
123-frame one 25, the last with 3 frames).

To a serving model a segment is just a short video (`rgb`/`audio` uint8 frames plus `num_frames`), so its
inputs are slices of a parsed record's frames: no second read and no other preprocessing.

`SegmentRanking` keeps, for each class, the best-scored segments of a stream of any length in bounded
memory (at most `limit` per class plus one pending block): what the 2019 submission file lists and what
segment mAP@100000 cuts at. Everything here is numpy; no TensorFlow.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from nextvlad import files, records
from nextvlad.serving import FRAME_INPUTS

logger = logging.getLogger(__name__)

SEGMENT_LENGTH = records.SEGMENT_FRAMES  # frames per segment in the 2019 release
SEGMENT_STRIDE = records.SEGMENT_FRAMES  # rated segments start at multiples of 5
MAX_SEGMENTS_PER_CLASS = 100_000  # segments a 2019 submission lists per class (mAP@100000)


def check_window(length: int, stride: int) -> None:
    """Raises ValueError unless `length` and `stride` are positive frame counts."""
    for name, value in (("segment length", length), ("segment stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive number of frames, got {value!r}")


def segment_starts(
    num_frames: int, *, length: int = SEGMENT_LENGTH, stride: int = SEGMENT_STRIDE
) -> np.ndarray:
    """Start frames of the segments covering a video of `num_frames` frames: 0, stride, ... < num_frames.

    Args:
        num_frames: the video's frames (at least 1).
        length: frames per segment (only checked here: every start inside the video gets a segment).
        stride: frames between two starts.

    Returns:
        int64 `[ceil(num_frames / stride)]`.
    """
    check_window(length, stride)
    return np.arange(0, max(int(num_frames), 0), stride, dtype=np.int64)


class SegmentInputs(NamedTuple):
    """Model inputs for a set of segments, and which video and start frame each row is."""

    inputs: dict[str, np.ndarray]  # `rgb` uint8 [S, L, 1024], `audio` uint8 [S, L, 128], `num_frames` [S]
    video_index: np.ndarray  # int64 [S]: position of the segment's video in the examples given
    start_time: np.ndarray  # int64 [S]: first frame (= second) of the segment


def segment_inputs(
    examples: Sequence[Mapping[str, Any]],
    *,
    length: int = SEGMENT_LENGTH,
    stride: int = SEGMENT_STRIDE,
    starts: Sequence[np.ndarray] | None = None,
) -> SegmentInputs:
    """Stacks the segments of parsed videos into a serving model's inputs, padded to `length` frames.

    Args:
        examples: parsed frame-level records (`nextvlad.records.parse_frame_example` dicts).
        length: frames per segment; shorter segments (a video's last) are padded with zeros and carry
            their true `num_frames`.
        stride: frames between two starts, when `starts` is not given.
        starts: the start frames to take from each video (e.g. only the rated ones); each must lie
            inside its video. Default: every segment (`segment_starts`).

    Returns:
        `SegmentInputs`, segments in video order, then start order.
    """
    check_window(length, stride)
    if starts is None:
        starts = [segment_starts(e["num_frames"], length=length, stride=stride) for e in examples]
    elif len(starts) != len(examples):
        raise ValueError(f"starts has {len(starts)} entries for {len(examples)} videos; give one per video")
    starts = [np.asarray(s, dtype=np.int64).reshape(-1) for s in starts]
    counts = np.array([s.size for s in starts], dtype=np.int64)  # [V]
    total = int(counts.sum())
    offsets = np.arange(length, dtype=np.int64)  # [L]
    inputs = {
        name: np.zeros((total, length, size), dtype=np.uint8) for name, size in FRAME_INPUTS.items()
    }  # [S, L, D]
    num_frames = np.empty(total, dtype=np.int32)  # [S]
    row = 0
    for example, video_starts in zip(examples, starts, strict=True):
        n = video_starts.size
        if not n:
            continue
        frames = int(example["num_frames"])
        if video_starts.min() < 0 or video_starts.max() >= frames:
            raise ValueError(
                f"segment starts {video_starts.tolist()[:5]} of video {example.get('id')!r} lie outside "
                f"its {frames} frames"
            )
        index = video_starts[:, None] + offsets  # [n, L]
        valid = index < frames  # [n, L]
        index = np.minimum(index, frames - 1)
        for name in FRAME_INPUTS:
            taken = np.asarray(example[name])[index]  # [n, L, D]
            taken[~valid] = 0  # padding is zeros, as in pad_batch
            inputs[name][row : row + n] = taken
        num_frames[row : row + n] = valid.sum(axis=1)
        row += n
    return SegmentInputs(
        inputs={**inputs, "num_frames": num_frames},
        video_index=np.repeat(np.arange(len(examples), dtype=np.int64), counts),
        start_time=np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64),
    )


def ratings_by_segment(example: Mapping[str, Any]) -> dict[int, dict[int, float]]:
    """A parsed record's segment ratings as `{start_time: {class_id: rating}}` (empty without ratings).

    A (segment, class) pair rated twice keeps its last rating, as the starter code's label reader does.
    """
    rated: dict[int, dict[int, float]] = {}
    for start, label, score in zip(
        example.get("segment_start_times", ()),
        example.get("segment_labels", ()),
        example.get("segment_scores", ()),
        strict=True,
    ):
        rated.setdefault(int(start), {})[int(label)] = float(score)
    return rated


def parse_class_ids(text: str, *, source: str = "class ids") -> list[int]:
    """Class ids from a CSV whose first column holds them, e.g. the 2019 `segment_label_ids.csv`.

    As the starter code reads that file: lines whose first field is not an integer (the `Index` header)
    are skipped.

    Returns:
        The ids, sorted and without repeats.

    Raises:
        ValueError: no line holds an id, or an id is negative.
    """
    ids = set()
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        try:
            ids.add(int(row[0].strip()))
        except ValueError:
            continue
    if not ids:
        raise ValueError(
            f"{source} holds no class ids; expected a CSV with one class id per line (a header such as "
            "'Index' is skipped), like the YouTube-8M segment_label_ids.csv"
        )
    if min(ids) < 0:
        raise ValueError(f"{source} holds negative class ids {sorted(i for i in ids if i < 0)[:5]}")
    return sorted(ids)


def read_class_ids(path: str) -> list[int]:
    """`parse_class_ids` of a local or remote (gs://) file (what every `--segment_classes` flag reads)."""
    try:
        text = files.read_text(path)
    except OSError as e:
        raise FileNotFoundError(
            f"cannot read class ids from {path!r} ({e}); pass a CSV with one class id per line, such as "
            "the dataset's segment_label_ids.csv"
        ) from None
    return parse_class_ids(text, source=path)


def write_class_ids(path: str, class_ids: Sequence[int]) -> None:
    """Writes class ids in the layout of the 2019 `segment_label_ids.csv` (header `Index`)."""
    files.write_bytes(path, ("Index\n" + "".join(f"{int(c)}\n" for c in class_ids)).encode())


class SegmentRanking:
    """For each class, the `limit` best-scored segments of a stream, in bounded memory.

    Segments arrive as `(class, score, key)` triples in any number of `add` calls; `ranked(c)` returns
    class `c`'s best `limit` keys by descending score, ties in arrival order. Memory holds at most `limit`
    entries per class plus one pending block of `block` triples: a block is merged as soon as it fills,
    and each class's current `limit`-th score then turns away anything lower before it is stored.

    Args:
        limit: entries kept per class (100,000 in the 2019 task).
        block: triples buffered before a merge.

    Example:
        >>> ranking = SegmentRanking(limit=2)
        >>> ranking.add([3, 3, 3], [0.2, 0.9, 0.5], np.array(["a:0", "a:5", "b:0"]))
        >>> ranking.ranked(3)[0].tolist()
        ['a:5', 'b:0']
    """

    def __init__(self, *, limit: int = MAX_SEGMENTS_PER_CLASS, block: int = 1 << 20) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive number of segments per class, got {limit!r}")
        self.limit = limit
        self._block = max(int(block), 1)
        self._kept: tuple[np.ndarray, ...] | None = None  # classes, scores, order, keys; class-major
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._pending_size = 0
        self._seen = 0  # triples added so far: the arrival order of the next one
        self._floor = np.zeros(0)  # [max class + 1]: a full class's lowest kept score, else -inf

    def add(self, classes: Any, scores: Any, keys: Any) -> None:
        """Adds scored segments: `classes[i]` scored `scores[i]` for the segment named `keys[i]`.

        Args:
            classes: int `[n]` class ids.
            scores: float `[n]`.
            keys: `[n]` numpy array naming each segment (e.g. `"videoid:start"` strings or row numbers).
        """
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        keys = np.asarray(keys).reshape(-1)
        if not (classes.size == scores.size == keys.size):
            raise ValueError(
                f"classes ({classes.size}), scores ({scores.size}) and keys ({keys.size}) must have one "
                "entry per scored segment"
            )
        order = np.arange(self._seen, self._seen + classes.size, dtype=np.int64)
        self._seen += classes.size
        if self._floor.size:
            inside = classes < self._floor.size
            floor = np.where(inside, self._floor[np.where(inside, classes, 0)], -np.inf)
            # Equal to the floor loses: it arrived after the kept entry it ties with.
            keep = scores > floor
            classes, scores, order, keys = classes[keep], scores[keep], order[keep], keys[keep]
        if classes.size:
            self._pending.append((classes, scores, order, keys))
            self._pending_size += classes.size
        if self._pending_size >= self._block:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        parts = ([self._kept] if self._kept is not None else []) + self._pending
        self._pending, self._pending_size = [], 0
        classes, scores, order, keys = (np.concatenate(column) for column in zip(*parts, strict=True))
        ranked = np.lexsort((order, -scores, classes))  # class, then descending score, then arrival
        classes, scores, order, keys = classes[ranked], scores[ranked], order[ranked], keys[ranked]
        starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])  # first row of each class
        rank = np.arange(classes.size) - np.repeat(starts, np.diff(np.r_[starts, classes.size]))
        keep = rank < self.limit
        self._kept = (classes[keep], scores[keep], order[keep], keys[keep])
        full = rank == self.limit - 1
        self._floor = np.full(int(classes.max()) + 1, -np.inf)
        self._floor[classes[full]] = scores[full]

    def classes(self) -> list[int]:
        """The classes that have at least one segment, ascending."""
        self._merge()
        return [] if self._kept is None else np.unique(self._kept[0]).tolist()

    def ranked(self, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        """`(keys, scores)` of class `class_id`'s best segments, best first (empty when it has none)."""
        self._merge()
        if self._kept is None:
            return np.zeros(0), np.zeros(0)
        classes, scores, _, keys = self._kept
        lo, hi = np.searchsorted(classes, [class_id, class_id + 1])
        return keys[lo:hi], scores[lo:hi]


def segment_chunks(
    inputs: Mapping[str, np.ndarray], chunk: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Splits stacked segment inputs into model calls of at most `chunk` segments.

    A short call is filled up to a power of two with copies of its last segment, so that a compiled
    predict function (JAX, PyTorch, XLA) sees a few input shapes instead of one per call.

    Yields:
        `(inputs, rows)`: one call's inputs and how many of its rows are real (drop the outputs after).
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk}; expected a positive number of segments per call")
    total = int(inputs["num_frames"].shape[0])
    for start in range(0, total, chunk):
        part = {name: value[start : start + chunk] for name, value in inputs.items()}
        rows = int(part["num_frames"].shape[0])
        size = min(chunk, 1 << (rows - 1).bit_length())
        if rows < size:
            part = {
                name: np.concatenate([v, np.repeat(v[-1:], size - rows, axis=0)]) for name, v in part.items()
            }
        yield part, rows


def count_rated_segments(paths: Sequence[str]) -> int:
    """Segments (distinct start times per video) with at least one rating in these TFRecord files: the
    training examples of fine-tuning on segment labels."""
    total = 0
    for path in paths:
        for data in files.iter_tfrecords(path):
            # One frame kept: only the context is needed, and the start times are still checked.
            example = records.parse_frame_example(data, max_frames=1, num_classes=None)
            total += len(set(example.get("segment_start_times", ())))
    return total
