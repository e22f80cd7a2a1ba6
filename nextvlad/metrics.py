"""YouTube-8M evaluation metrics, computed exactly with numpy.

These functions are the reference definitions (docs/design.md, "Metrics"); they follow the YouTube-8M
evaluation code (`eval_util.py`, `average_precision_calculator.py`) with deterministic tie-breaking:

- `gap`: global average precision of each video's top-k predictions, pooled over all videos.
- `hit_at_one`: fraction of videos whose top-1 prediction is a true label.
- `perr`: precision at equal recall rate, mean over videos that have at least one label.
- `mean_average_precision` / `average_precision_per_class`: per-class average precision over each
  video's top-k predictions (the dataset's `top_k_by_class`), with every positive in the denominator.
- `segment_mean_average_precision` / `segment_average_precision`: the 2019 segment task's mAP@100000
  over human-rated 5-second segments.

Inputs everywhere: `predictions` float `[N, C]` (scores, typically sigmoid probabilities) and
`labels` dense binary `[N, C]` (bool, int or float holding 0/1).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "average_precision_from_top_k",
    "average_precision_per_class",
    "gap",
    "hit_at_one",
    "mean_average_precision",
    "perr",
    "segment_average_precision",
    "segment_mean_average_precision",
    "top_k",
]


def _check_predictions(predictions: Any) -> np.ndarray:
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[1] == 0:
        raise ValueError(
            f"predictions must be a 2-D array [num_videos, num_classes]; got shape {predictions.shape}. "
            "Stack per-video score vectors into one matrix."
        )
    if not np.issubdtype(predictions.dtype, np.floating):
        predictions = predictions.astype(np.float64)
    if not np.all(np.isfinite(predictions)):
        bad = np.argwhere(~np.isfinite(predictions))[0]
        raise ValueError(
            f"predictions contain a non-finite value ({predictions[tuple(bad)].item()!r} at video {bad[0]}, "
            f"class {bad[1]}); scores must be finite to be ranked."
        )
    return predictions


def _check_inputs(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions = _check_predictions(predictions)
    labels = np.asarray(labels)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels shape {labels.shape} does not match predictions shape {predictions.shape}; "
            "labels must be a dense 0/1 matrix [num_videos, num_classes] "
            "(convert class-id lists with a multi-hot encoding first)."
        )
    if labels.dtype != np.bool_:
        is_binary = (labels == 0) | (labels == 1)
        if not np.all(is_binary):
            bad = np.argwhere(~is_binary)[0]
            raise ValueError(
                f"labels must be 0/1; got {labels[tuple(bad)].item()!r} at video {bad[0]}, class {bad[1]}. "
                "Pass a multi-hot matrix, not class ids or counts."
            )
        labels = labels.astype(bool)
    return predictions, labels


def _check_k(k: int, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"{name} must be a positive integer; got {k!r}.")
    return int(k)


def top_k(predictions: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `k` highest scores, sorted descending, with deterministic ties.

    Among equal scores the lower class id comes first, both for which classes make the top k
    and for their order, so results never depend on the sorting algorithm or platform.

    Args:
        predictions: float array `[N, C]`.
        k: number of classes to keep per row; values above `C` keep all `C`.

    Returns:
        `(indices, scores)`: int64 class ids `[N, min(k, C)]` and their scores (same dtype as
        `predictions`), best first.
    """
    return _top_k(_check_predictions(predictions), _check_k(k, "k"))


def _top_k(predictions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, predictions.shape[1])
    num_rows, num_classes = predictions.shape
    if k == num_classes or num_rows == 0:
        indices = np.argsort(-predictions, axis=1, kind="stable")[:, :k]
        return indices.astype(np.int64), np.take_along_axis(predictions, indices, axis=1)
    # Linear-time selection: argpartition finds the k-th largest score per row, but picks an
    # arbitrary subset among scores tied with it, so the members are chosen again explicitly:
    # everything strictly above the threshold plus the lowest-id classes equal to it.
    part = np.argpartition(-predictions, k - 1, axis=1)[:, :k]  # [N, k]
    threshold = np.take_along_axis(predictions, part, axis=1).min(axis=1, keepdims=True)  # [N, 1]
    above = predictions > threshold  # [N, C]
    equal = predictions == threshold  # [N, C]
    needed = k - above.sum(axis=1, keepdims=True)  # [N, 1], >= 1
    if np.array_equal(equal.sum(axis=1, keepdims=True), needed):
        members = above | equal  # no ties straddle the cut (the usual case)
    else:
        members = above | (equal & (np.cumsum(equal, axis=1) <= needed))  # exactly k per row
    indices = np.nonzero(members)[1].reshape(num_rows, k)  # ascending class id within each row
    scores = np.take_along_axis(predictions, indices, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")  # stable: lower class id first among ties
    indices = np.take_along_axis(indices, order, axis=1)
    return indices.astype(np.int64), np.take_along_axis(scores, order, axis=1)


def _average_precision(hits: np.ndarray, num_positives: int) -> float:
    """AP of a ranked list of hits: sum of precision@i at each hit, over `num_positives`."""
    if num_positives == 0:
        return 0.0
    hits = hits.astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(np.sum(precision * hits) / num_positives)


def gap(predictions: Any, labels: Any, *, top_k: int = 20) -> float:
    """Global average precision (GAP@k) as in the YouTube-8M evaluation.

    Every video contributes its `top_k` predictions; all (score, is_positive) pairs are pooled and
    sorted by score descending (ties: stable in video order, then class rank within the video), and
    `GAP = sum_i precision@i * delta_recall@i`. Recall's denominator is the total number of positive
    labels in `labels`, so positives that fall outside every top-k lower the GAP.

    Args:
        predictions: float scores `[N, C]`.
        labels: dense 0/1 labels `[N, C]`.
        top_k: predictions kept per video (20 in the YouTube-8M challenges).

    Returns:
        GAP in [0, 1]; 0.0 when `labels` has no positives (nothing can be recalled).
    """
    predictions, labels = _check_inputs(predictions, labels)
    indices, scores = _top_k(predictions, _check_k(top_k, "top_k"))  # [N, k]
    hits = np.take_along_axis(labels, indices, axis=1)  # [N, k]
    order = np.argsort(-scores.ravel(), kind="stable")  # video-major ravel keeps the tie order
    return _average_precision(hits.ravel()[order], int(labels.sum()))


def hit_at_one(predictions: Any, labels: Any) -> float:
    """Fraction of videos whose highest-scoring class is a true label.

    All videos count, including unlabeled ones (they can never hit), as in the YouTube-8M code.
    Ties go to the lower class id.

    Args:
        predictions: float scores `[N, C]`.
        labels: dense 0/1 labels `[N, C]`.

    Returns:
        Hit@1 in [0, 1]; 0.0 for an empty set.
    """
    predictions, labels = _check_inputs(predictions, labels)
    if predictions.shape[0] == 0:
        return 0.0
    top1 = np.argmax(predictions, axis=1)  # first maximum: lower class id wins ties
    return float(np.mean(labels[np.arange(labels.shape[0]), top1]))


def perr(predictions: Any, labels: Any) -> float:
    """Precision at equal recall rate: for a video with L labels, the precision of its top-L.

    Averaged over videos with at least one label (unlabeled videos have no defined PERR and are
    skipped, per docs/design.md; the original YouTube-8M script divides by all videos instead).
    Ties inside the top-L go to the lower class id.

    Args:
        predictions: float scores `[N, C]`.
        labels: dense 0/1 labels `[N, C]`.

    Returns:
        PERR in [0, 1]; 0.0 when no video has a label.
    """
    predictions, labels = _check_inputs(predictions, labels)
    num_labels = labels.sum(axis=1)  # [N]
    labeled = num_labels > 0
    if not np.any(labeled):
        return 0.0
    predictions, labels, num_labels = predictions[labeled], labels[labeled], num_labels[labeled]
    indices, _ = _top_k(predictions, int(num_labels.max()))  # [N', Lmax]
    hits = np.take_along_axis(labels, indices, axis=1)  # [N', Lmax]
    within = np.arange(indices.shape[1])[None, :] < num_labels[:, None]  # keep each video's top-L
    return float(np.mean((hits & within).sum(axis=1) / num_labels))


def average_precision_from_top_k(indices: Any, scores: Any, labels: Any) -> np.ndarray:
    """Per-class average precision over each video's top-k predictions (the YouTube-8M definition).

    Class c's ranked list holds only the videos whose top-k predictions include c, by score descending
    (ties keep video order); its AP is `sum over the hits of precision at their rank / positives_c`,
    where `positives_c` counts *every* video labeled c, so a positive outside a video's top-k lowers
    the AP. This is the starter code's `eval_util.top_k_by_class` feeding its mean-AP calculator.

    Args:
        indices: int class ids `[N, k]` of each video's top-k predictions (`top_k`).
        scores: their scores `[N, k]`.
        labels: dense 0/1 labels `[N, C]`.

    Returns:
        float64 `[C]`; NaN for classes with no positive video (their AP is undefined), 0 for classes whose
        positives never reach a top-k.
    """
    labels = np.asarray(labels).astype(bool, copy=False)
    indices, scores = np.asarray(indices), np.asarray(scores)
    num_classes = labels.shape[1]
    classes = indices.ravel()  # [N·k], video-major
    hits = np.take_along_axis(labels, indices, axis=1).ravel()  # [N·k]
    order = np.lexsort((-scores.ravel().astype(np.float64), classes))  # by class, then score; stable
    classes, hits = classes[order], hits[order].astype(np.float64)
    starts = np.searchsorted(classes, np.arange(num_classes))  # first position of each class
    group_start = starts[classes]  # [N·k]
    ranks = np.arange(1, classes.size + 1) - group_start  # 1-based rank inside the class's list
    cumulative = np.cumsum(hits)
    before = np.concatenate([[0.0], cumulative])[group_start]  # hits of the earlier classes
    precision = (cumulative - before) / ranks
    precision_sum = np.bincount(classes, weights=precision * hits, minlength=num_classes)  # [C]
    positives = labels.sum(axis=0)  # [C]
    ap = np.full(num_classes, np.nan)
    has_positives = positives > 0
    ap[has_positives] = precision_sum[has_positives] / positives[has_positives]
    return ap


def average_precision_per_class(predictions: Any, labels: Any, *, top_k: int | None = 20) -> np.ndarray:
    """Average precision of each class over the videos' top-k predictions, as the YouTube-8M code does.

    See `average_precision_from_top_k` for the definition. `top_k=None` ranks every video by every
    class's score instead (the textbook per-class AP, not what the dataset's tools report).

    Args:
        predictions: float scores `[N, C]`.
        labels: dense 0/1 labels `[N, C]`.
        top_k: predictions kept per video (20 in the YouTube-8M evaluation); None: all of them.

    Returns:
        float64 array `[C]`; NaN for classes with no positive video (their AP is undefined).
    """
    predictions, labels = _check_inputs(predictions, labels)
    k = predictions.shape[1] if top_k is None else _check_k(top_k, "top_k")
    indices, scores = _top_k(predictions, k)  # [N, k]
    return average_precision_from_top_k(indices, scores, labels)


def mean_average_precision(predictions: Any, labels: Any, *, top_k: int | None = 20) -> float:
    """Mean over classes of average precision (mAP), over each video's top-k predictions.

    The YouTube-8M evaluation's mAP (`eval.py`): per-class AP as in `average_precision_per_class`,
    averaged over the classes that have at least one positive video in `labels`. Classes without one
    have no defined AP; counting them as 0 would make mAP depend on how many classes happen to be
    absent from the evaluation split.

    Args:
        predictions: float scores `[N, C]`.
        labels: dense 0/1 labels `[N, C]`.
        top_k: predictions kept per video (20); None ranks all scores (not the dataset's definition).

    Returns:
        mAP in [0, 1]; 0.0 when no class has a positive.
    """
    ap = average_precision_per_class(predictions, labels, top_k=top_k)
    valid = ap[~np.isnan(ap)]
    return float(valid.mean()) if valid.size else 0.0


SEGMENT_MAX_PREDICTIONS = 100_000  # segments a 2019 submission lists per class


def segment_average_precision(
    scores: Any,
    rated_segments: Any,
    rated_classes: Any,
    ratings: Any,
    *,
    max_predictions: int = SEGMENT_MAX_PREDICTIONS,
) -> np.ndarray:
    """Per-class segment AP of the YouTube-8M 2019 segment task (`segment_eval_inference.py`).

    For each class, every scored segment is ranked by its score for that class and the list is cut
    after `max_predictions` (what a submission holds); segments not rated for that class are then
    dropped, and the AP of what is left is `Σ precision at each positive rating / all positive ratings of
    the class` (so a positive segment ranked below the cut lowers it). Ties keep segment order.

    Args:
        scores: float `[S, C]`: every scored segment's score for each class.
        rated_segments: int `[R]`: the segment (row of `scores`) of each rating.
        rated_classes: int `[R]`: the class (column of `scores`) of each rating.
        ratings: `[R]` human ratings, 1 (present) or 0 (absent).
        max_predictions: segments kept per class before rated ones are looked up (100,000).

    Returns:
        float64 `[C]`: AP per class; NaN for classes without a positive rating (left out of the mean).
    """
    scores = _check_predictions(scores)
    segments = np.asarray(rated_segments, dtype=np.int64)
    classes = np.asarray(rated_classes, dtype=np.int64)
    positive = np.asarray(ratings, dtype=np.float64) > 0
    if not (segments.shape == classes.shape == positive.shape) or segments.ndim != 1:
        raise ValueError(
            f"rated_segments {segments.shape}, rated_classes {classes.shape} and ratings {positive.shape} "
            "must be 1-D arrays of the same length (one entry per rating)"
        )
    num_segments, num_classes = scores.shape
    if segments.size and (segments.min() < 0 or segments.max() >= num_segments):
        raise ValueError(f"rated_segments must index the {num_segments} rows of scores")
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"rated_classes must index the {num_classes} columns of scores")
    _check_k(max_predictions, "max_predictions")
    ap = np.full(num_classes, np.nan)
    for c in np.unique(classes[positive]):
        mine = classes == c
        rank = np.empty(num_segments, dtype=np.int64)
        rank[np.argsort(-scores[:, c], kind="stable")] = np.arange(num_segments)  # 0 = best
        kept = mine & (rank[segments] < max_predictions)
        order = np.argsort(rank[segments[kept]], kind="stable")
        hits = positive[kept][order]
        ap[c] = _average_precision(hits, int(np.count_nonzero(positive & mine)))
    return ap


def segment_mean_average_precision(
    scores: Any,
    rated_segments: Any,
    rated_classes: Any,
    ratings: Any,
    *,
    max_predictions: int = SEGMENT_MAX_PREDICTIONS,
) -> float:
    """Segment mAP@`max_predictions` (the 2019 challenge metric): `segment_average_precision` averaged
    over the classes with at least one positive rating; 0.0 when there is none."""
    ap = segment_average_precision(
        scores, rated_segments, rated_classes, ratings, max_predictions=max_predictions
    )
    valid = ap[~np.isnan(ap)]
    return float(valid.mean()) if valid.size else 0.0
