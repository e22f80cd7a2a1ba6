"""What `trainer.evaluate --segments` computes: segment mAP@100000, the YouTube-8M 2019 challenge metric.

The definition is the starter code's (google/youtube-8m `segment_eval_inference.py`, with the per-class
lists that its `inference.py --segment_labels` writes), as `nextvlad.metrics.segment_average_precision`
implements it: every segment of every video is scored; for each class the segments are ranked by their
score for it and the list is cut after `max_predictions` (100,000); segments nobody rated for that class
are dropped from the list; the class's AP is `Σ precision at each positive rating / all positive ratings
of the class` (a positive ranked below the cut, or beyond the frames the model reads, still counts in the
denominator); segment mAP is the mean over the classes with at least one positive rating. Ties keep the
order segments are read in (file, video, start time).

Memory stays bounded whatever the corpus size. When the data holds no more segments than `max_predictions`
nothing can be cut, so only the rated segments need scores (the unrated ones are dropped anyway) and only
those are scored: the same number, a fraction of the work. Otherwise every segment is scored and
`nextvlad.segments.SegmentRanking` keeps each class's best `max_predictions`.

Segment scores come from one of two sources (`source`):
- `"segments"`: the model applied to each segment, a short video of `length` frames;
- `"video"`: the model applied to the whole video, its prediction copied to every segment of the video
  (the baseline a segment model has to beat).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from nextvlad import files, records
from nextvlad.metrics import SEGMENT_MAX_PREDICTIONS
from nextvlad.segments import (
    SEGMENT_LENGTH,
    SEGMENT_STRIDE,
    SegmentRanking,
    check_window,
    segment_chunks,
    segment_inputs,
)
from nextvlad.serving import ModelInfo, pad_batch

logger = logging.getLogger(__name__)

SOURCES = ("segments", "video")
DEFAULT_VIDEO_BATCH = 64  # videos read per step
DEFAULT_SEGMENT_BATCH = 512  # segments per model call
_FRAME_BUCKET = 32  # video batches are padded to a multiple of this many frames: few traced shapes


@dataclasses.dataclass
class SegmentEvaluation:
    """Segment mAP and its per-class parts (see the module docstring for the definition).

    Attributes:
        metrics: `segment_map`, `max_predictions`, counts of videos, segments and ratings, `source`,
            `segment_length`, `segment_stride`, `scored` (`"rated"` or `"all"` segments).
        average_precision: float64 `[C]`; NaN for classes without a positive rating.
        rated_segments: int64 `[C]` ratings per class.
        positives: int64 `[C]` positive ratings per class.
    """

    metrics: dict[str, Any]
    average_precision: np.ndarray
    rated_segments: np.ndarray
    positives: np.ndarray


class SegmentMAP:
    """Streaming segment mAP@`max_predictions` over scored segments (exactly the module's definition).

    Feed every scored segment in reading order with `add`: its scores for all classes and its ratings.
    With `rank_all=False` the caller promises there are at most `max_predictions` segments in all, so no
    cut applies and unrated segments may be left out.

    Args:
        num_classes: C.
        max_predictions: segments kept per class before rated ones are looked up.
        rank_all: rank every segment added (needed when there may be more than `max_predictions`).
        classes: with `rank_all`, the classes worth ranking (those with positive ratings); default all.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        max_predictions: int = SEGMENT_MAX_PREDICTIONS,
        rank_all: bool = True,
        classes: Any = None,
    ) -> None:
        self.num_classes = num_classes
        self.max_predictions = max_predictions
        self._ranking = SegmentRanking(limit=max_predictions) if rank_all else None
        self._columns = np.arange(num_classes) if classes is None else np.unique(np.asarray(classes, int))
        self._rows = 0  # segments added so far: the next one's reading order
        self._entries: list[tuple[np.ndarray, ...]] = []  # (row, class, rating, score) per ratings block
        self._unscored: list[tuple[np.ndarray, np.ndarray]] = []  # (class, rating) of unscored ratings

    def add(self, scores: np.ndarray, rated_rows: Any, rated_classes: Any, ratings: Any) -> None:
        """Adds a block of scored segments.

        Args:
            scores: float `[S, C]`, one row per segment, in reading order.
            rated_rows: int `[R]`: the row of `scores` each rating is for.
            rated_classes: int `[R]`: the rated class.
            ratings: `[R]`: 1 (present) or 0 (absent).
        """
        scores = np.asarray(scores)
        rows = np.asarray(rated_rows, dtype=np.int64)
        classes = np.asarray(rated_classes, dtype=np.int64)
        if rows.size:
            self._entries.append(
                (
                    rows + self._rows,
                    classes,
                    np.asarray(ratings, dtype=np.float64) > 0,
                    scores[rows, classes].astype(np.float64),
                )
            )
        if self._ranking is not None and scores.shape[0]:
            order = np.arange(self._rows, self._rows + scores.shape[0], dtype=np.int64)
            block = scores[:, self._columns]  # [S, K]
            self._ranking.add(
                np.broadcast_to(self._columns, block.shape).ravel(),
                block.ravel(),
                np.repeat(order, len(self._columns)),
            )
        self._rows += scores.shape[0]

    def add_unscored(self, rated_classes: Any, ratings: Any) -> None:
        """Adds ratings of segments that were not scored: their positives count in the denominator only."""
        self._unscored.append((np.asarray(rated_classes, np.int64), np.asarray(ratings, np.float64) > 0))

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(average_precision [C], rated [C], positives [C])`: AP is NaN without a positive rating."""
        if self._entries:
            rows, classes, hits, scores = (np.concatenate(c) for c in zip(*self._entries, strict=True))
        else:
            rows = classes = np.zeros(0, np.int64)
            hits, scores = np.zeros(0, bool), np.zeros(0)
        unscored_classes, unscored_hits = (
            (np.concatenate(c) for c in zip(*self._unscored, strict=True))
            if self._unscored
            else (np.zeros(0, np.int64), np.zeros(0, bool))
        )
        rated = np.bincount(np.r_[classes, unscored_classes], minlength=self.num_classes).astype(np.int64)
        positives = np.bincount(
            np.r_[classes[hits], unscored_classes[unscored_hits]], minlength=self.num_classes
        ).astype(np.int64)
        ap = np.full(self.num_classes, np.nan)
        for c in np.flatnonzero(positives):
            mine = classes == c
            kept = mine
            if self._ranking is not None:
                kept = mine & np.isin(rows, self._ranking.ranked(int(c))[0])
            order = np.lexsort((rows[kept], -scores[kept]))  # descending score, then reading order
            ranked_hits = hits[kept][order]
            precision = np.cumsum(ranked_hits) / np.arange(1, ranked_hits.size + 1)
            ap[c] = float(precision[ranked_hits].sum() / positives[c])
        return ap, rated, positives


@dataclasses.dataclass
class _Video:
    """What the first pass learns about one record: enough to plan the segments to score."""

    num_frames: int
    starts: np.ndarray  # int64 [R_v]: start frame of each rating (inside the frames the model reads)
    classes: np.ndarray  # int64 [R_v]
    ratings: np.ndarray  # float64 [R_v]
    unscored_classes: np.ndarray  # int64: classes of the ratings past the frames the model reads
    unscored_ratings: np.ndarray  # float64


def _parse(data: bytes, info: ModelInfo, *, path: str, index: int) -> dict[str, Any]:
    try:
        return records.parse_frame_example(data, max_frames=info.max_frames, num_classes=info.num_classes)
    except records.InvalidRecordError as e:
        raise ValueError(
            f"Record {index} of {path} (video {e.video_id or 'with no id'}) cannot be evaluated: {e}"
        ) from None


def _records(paths: list[str], info: ModelInfo) -> Iterator[dict[str, Any]]:
    for path in paths:
        for index, data in enumerate(files.iter_tfrecords(path)):
            yield _parse(data, info, path=path, index=index)


def _survey(paths: list[str], info: ModelInfo, *, stride: int) -> tuple[list[_Video], int]:
    """First pass: each video's frames and ratings, checked; and the ratings beyond the model's frames."""
    videos, beyond = [], 0
    for example in _records(paths, info):
        starts = np.asarray(example.get("segment_start_times", []), dtype=np.int64)
        classes = np.asarray(example.get("segment_labels", []), dtype=np.int64)
        ratings = np.asarray(example.get("segment_scores", []), dtype=np.float64)
        outside = classes[(classes < 0) | (classes >= info.num_classes)]
        if outside.size:
            raise ValueError(
                f"video {example['id']!r} rates classes {outside[:5].tolist()} outside the model's "
                f"{info.num_classes} classes; evaluate a model of this data's vocabulary"
            )
        off_grid = starts[starts % stride != 0]
        if off_grid.size:
            raise ValueError(
                f"video {example['id']!r} has a rated segment starting at frame {int(off_grid[0])}, which "
                f"no segment of stride {stride} starts at; pass a --segment_stride that divides the rated "
                f"start times (the 2019 release rates segments at multiples of {SEGMENT_STRIDE})"
            )
        # Ratings past the frames the model reads (its max_frames) cannot be scored: their positives
        # still count in the denominator, as a segment missing from a submission does.
        inside = starts < example["num_frames"]
        beyond += int(np.count_nonzero(~inside))
        videos.append(
            _Video(
                example["num_frames"],
                starts[inside],
                classes[inside],
                ratings[inside],
                classes[~inside],
                ratings[~inside],
            )
        )
    return videos, beyond


def evaluate_segments(
    model: Any,
    info: ModelInfo,
    data_pattern: str,
    *,
    source: str = "segments",
    length: int = SEGMENT_LENGTH,
    stride: int = SEGMENT_STRIDE,
    max_predictions: int = SEGMENT_MAX_PREDICTIONS,
    batch_size: int | None = None,
    segment_batch_size: int = DEFAULT_SEGMENT_BATCH,
    progress: bool = True,
) -> SegmentEvaluation:
    """Segment mAP@`max_predictions` of a frame-level serving model on segment-rated records.

    Args:
        model: a NeXtVLAD serving model (`nextvlad.serving`), frame level.
        info: its `ModelInfo`.
        data_pattern: TFRecord glob (local or gs://) of records with `segment_start_times`,
            `segment_labels` and `segment_scores`.
        source: `"segments"` (the model on each segment) or `"video"` (the video's prediction copied to
            each of its segments).
        length: frames per segment given to the model.
        stride: frames between segment starts; rated start times must be multiples of it.
        max_predictions: segments ranked per class before the rated ones are looked up (100,000).
        batch_size: videos read per step (default 64).
        segment_batch_size: segments per model call.
        progress: show a progress bar.

    Returns:
        A `SegmentEvaluation`.

    Raises:
        FileNotFoundError: the pattern matches no file.
        ValueError: not a frame-level model, no ratings in the data, an invalid record, rated classes
            outside the model's, or rated start times off the stride's grid.
    """
    from tqdm import tqdm

    if info.input_format != "frame":
        raise ValueError(
            f"segment evaluation needs a frame-level model (segments are frames); {info.path} takes "
            "video-level inputs"
        )
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; expected one of {SOURCES}")
    check_window(length, stride)
    batch_size = batch_size or DEFAULT_VIDEO_BATCH
    if batch_size < 1 or segment_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {segment_batch_size}")
    paths = files.expand_pattern(data_pattern)
    videos, beyond = _survey(paths, info, stride=stride)
    num_ratings = sum(v.starts.size for v in videos) + beyond
    if not num_ratings:
        raise ValueError(
            f"The records matching {data_pattern!r} carry no segment ratings (segment_start_times, "
            "segment_labels, segment_scores); evaluate segment-rated data, e.g. the 2019 validation set or "
            "`python -m nextvlad.synthetic --segments`"
        )
    total_segments = sum(-(-v.num_frames // stride) for v in videos)
    rank_all = total_segments > max_predictions
    positive_classes = np.unique(
        np.concatenate([v.classes[v.ratings > 0] for v in videos] + [np.zeros(0, np.int64)])
    )
    accumulator = SegmentMAP(
        info.num_classes, max_predictions=max_predictions, rank_all=rank_all, classes=positive_classes
    )
    for video in videos:
        accumulator.add_unscored(video.unscored_classes, video.unscored_ratings)
    logger.info(
        "%d videos, %d segments, %d ratings: scoring %s segments (%s)",
        len(videos),
        total_segments,
        num_ratings,
        "all" if rank_all else "the rated",
        "more segments than the cut, so every segment is ranked"
        if rank_all
        else f"at most {max_predictions:,} segments in all: nothing is cut, unrated segments drop out",
    )

    frame_lengths = (*range(_FRAME_BUCKET, info.max_frames, _FRAME_BUCKET), info.max_frames)
    scored = 0
    batch: list[dict[str, Any]] = []
    plan: list[_Video] = []

    def flush() -> None:
        nonlocal scored
        starts = [
            np.arange(0, v.num_frames, stride, dtype=np.int64) if rank_all else np.unique(v.starts)
            for v in plan
        ]
        segments = segment_inputs(batch, length=length, starts=starts)
        if source == "video":
            videos_out = model.predict_on_batch(pad_batch(batch, "frame", lengths=frame_lengths))
            scores = np.asarray(videos_out["predictions"], dtype=np.float32)[segments.video_index]
        else:
            scores = _predict_segments(model, segments.inputs, segment_batch_size)
        # Rows of this block's ratings: segments are in video order, then start order.
        offsets = np.concatenate([[0], np.cumsum([s.size for s in starts])])
        rows, classes, ratings = [], [], []
        for i, video in enumerate(plan):
            rows.append(offsets[i] + np.searchsorted(starts[i], video.starts))
            classes.append(video.classes)
            ratings.append(video.ratings)
        accumulator.add(scores, np.concatenate(rows), np.concatenate(classes), np.concatenate(ratings))
        scored += scores.shape[0]

    with tqdm(total=len(videos), unit="video", disable=not progress, desc="scoring segments") as bar:
        for example, video in zip(_records(paths, info), videos, strict=True):
            if not rank_all and not video.starts.size:
                bar.update(1)
                continue  # nothing of this video is rated and nothing can be cut: skip its frames
            batch.append(example)
            plan.append(video)
            if len(batch) == batch_size:
                flush()
                bar.update(len(batch))
                batch, plan = [], []
        if batch:
            flush()
            bar.update(len(batch))

    ap, rated, positives = accumulator.result()
    valid = ap[~np.isnan(ap)]
    metrics = {
        "segment_map": float(valid.mean()) if valid.size else 0.0,
        "max_predictions": int(max_predictions),
        "classes_with_positives": int(valid.size),
        "num_videos": len(videos),
        "num_segments": int(total_segments),
        "num_segments_scored": int(scored),
        "num_ratings": int(num_ratings),
        "num_positive_ratings": int(positives.sum()),
        "ratings_beyond_model_frames": int(beyond),
        "scored": "all" if rank_all else "rated",
        "source": source,
        "segment_length": int(length),
        "segment_stride": int(stride),
    }
    return SegmentEvaluation(metrics=metrics, average_precision=ap, rated_segments=rated, positives=positives)


def _predict_segments(model: Any, inputs: dict[str, np.ndarray], chunk: int) -> np.ndarray:
    """The model's predictions `[S, C]` for stacked segments, `chunk` segments per call."""
    out = [
        np.asarray(model.predict_on_batch(part)["predictions"], dtype=np.float32)[:rows]
        for part, rows in segment_chunks(inputs, chunk)
    ]
    return np.concatenate(out)
