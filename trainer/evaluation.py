"""What `trainer.evaluate` computes: a model's predictions on YouTube-8M records, and the metrics.

Records are read with the project's own record reader (`nextvlad.records`, the same parser as scoring;
no TensorFlow), batched and padded as the serving contract says (`nextvlad.serving.pad_batch`), and
predicted batch by batch. `compute_evaluation` then gives GAP@k, Hit@1, PERR, mAP and the per-class
statistics with the `nextvlad.metrics` definitions, in memory bounded by blocks of rows and the `[N, k]`
top-k lists.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from nextvlad import files, records
from nextvlad.serving import ModelInfo, pad_batch

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = {"frame": 64, "video": 1024}
_ROW_BLOCK = 2048  # metrics run over blocks of rows: temporaries stay small next to the [N, C] scores
_FRAME_BUCKET = 32  # frame-level batches are padded to a multiple of this many frames


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
    """Model scores for every video of an evaluation set, in file order.

    Attributes:
        ids: video ids, `N` strings.
        scores: float32 `[N, C]` predicted probabilities.
        labels: bool `[N, C]` ground truth (all False for unlabeled videos).
    """

    ids: list[str]
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class _Rows:
    """Row-wise growable `[N, C]` array: preallocated when N is known, so no concatenation copy."""

    def __init__(self, capacity: int, width: int, dtype: Any) -> None:
        self._data = np.empty((max(capacity, 1), width), dtype=dtype)
        self._size = 0

    def extend(self, rows: np.ndarray) -> None:
        end = self._size + rows.shape[0]
        if end > self._data.shape[0]:
            grown = np.empty((max(end, 2 * self._data.shape[0]), self._data.shape[1]), self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : end] = rows
        self._size = end

    def array(self) -> np.ndarray:
        return self._data[: self._size]


def _frame_lengths(info: ModelInfo) -> tuple[int, ...]:
    """The frame counts batches are padded up to: multiples of `_FRAME_BUCKET`, then the model's limit.

    Each frame-level batch would otherwise be as long as its longest video, so T would take up to
    `max_frames` values, each a retrace of the compiled predict function (seconds for the paper's model,
    every time on jit backends). Padded frames are masked by `num_frames`: scores do not change.
    """
    if info.input_format != "frame":
        return ()
    return (*range(_FRAME_BUCKET, info.max_frames, _FRAME_BUCKET), info.max_frames)


def _fill_rows(inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """A short batch after full ones is filled with copies of its last video (their scores are dropped),
    so that the batch axis has one size too."""
    rows = len(next(iter(inputs.values())))
    if rows >= batch_size:
        return inputs
    return {
        name: np.concatenate([x, np.repeat(x[-1:], batch_size - rows, axis=0)]) for name, x in inputs.items()
    }


def predict_records(
    model: Any,
    info: ModelInfo,
    data_pattern: str,
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> Predictions:
    """Runs a serving model over every record of `data_pattern` (files in sorted order), batch by batch.

    Args:
        model: a NeXtVLAD serving model (`nextvlad.serving`).
        info: what the model takes (`nextvlad.serving.describe_model`).
        data_pattern: TFRecord glob, local or gs://.
        batch_size: videos per batch (default 64 for frame level, 1024 for video level).
        progress: show a progress bar.

    Returns:
        The ids, scores and labels of all videos, in file order.

    Raises:
        FileNotFoundError: the pattern matches no file.
        ValueError: an invalid record (wrong kind, label outside the model's classes, malformed): the
            message names the file, the record and what to do; or no records at all.
    """
    from tqdm import tqdm

    batch_size = batch_size or DEFAULT_BATCH_SIZE[info.input_format]
    paths = files.expand_pattern(data_pattern)
    # Local files are counted from their framing in milliseconds; remote ones would need a full read.
    total = files.count_records(paths) if not any(files.is_remote(p) for p in paths) else None
    capacity = total if total is not None else 4 * batch_size
    scores = _Rows(capacity, info.num_classes, np.float32)
    labels = _Rows(capacity, info.num_classes, np.bool_)
    ids: list[str] = []

    def flush(batch: list[dict[str, Any]]) -> None:
        rows = len(batch)
        inputs = pad_batch(batch, info.input_format, lengths=_frame_lengths(info))
        inputs = _fill_rows(inputs, batch_size if ids else rows)
        out = model.predict_on_batch(inputs)
        scores.extend(np.asarray(out["predictions"][:rows], dtype=np.float32))  # [B, C]
        hot = np.zeros((rows, info.num_classes), dtype=np.bool_)
        for i, example in enumerate(batch):
            hot[i, example["labels"]] = True
        labels.extend(hot)  # [B, C]
        ids.extend(example["id"] for example in batch)

    batch: list[dict[str, Any]] = []
    with tqdm(total=total, unit="video", disable=not progress, desc="predicting") as bar:
        for path in paths:
            for index, data in enumerate(files.iter_tfrecords(path)):
                batch.append(_parse(data, info, path=path, index=index))
                if len(batch) == batch_size:
                    flush(batch)
                    bar.update(len(batch))
                    batch = []
        if batch:
            flush(batch)
            bar.update(len(batch))
    if not ids:
        raise ValueError(f"The files matching {data_pattern!r} hold no records; nothing to evaluate")
    return Predictions(ids=ids, scores=scores.array(), labels=labels.array())


def _parse(data: bytes, info: ModelInfo, *, path: str, index: int) -> dict[str, Any]:
    try:
        if info.input_format == "frame":
            return records.parse_frame_example(data, max_frames=info.max_frames, num_classes=info.num_classes)
        return records.parse_video_example(data, num_classes=info.num_classes)
    except records.InvalidRecordError as e:
        advice = {
            "label_out_of_range": f"evaluate this {info.num_classes}-class model on records labeled with "
            "the vocabulary it was trained on (its num_classes)",
            "wrong_record_kind": f"the model takes {info.input_format}-level records",
        }.get(
            e.reason,
            "fix or remove the record (pipelines.score lists every invalid record in its dead letter)",
        )
        video = e.video_id or "with no id"
        raise ValueError(
            f"Record {index} of {path} (video {video}) cannot be evaluated: {e}; {advice}"
        ) from None


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def block_top_k(predictions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`metrics.top_k` over blocks of rows: rows are independent, and one call on `[N, C]` would
    allocate int64 `[N, C]` indices (twice the score matrix) just to keep `[N, k]` of them."""
    from nextvlad import metrics

    k = min(k, predictions.shape[1])
    indices = np.empty((predictions.shape[0], k), dtype=np.int64)  # [N, k]
    scores = np.empty((predictions.shape[0], k), dtype=predictions.dtype)  # [N, k]
    for start in range(0, predictions.shape[0], _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        indices[rows], scores[rows] = metrics.top_k(predictions[rows], k)
    return indices, scores


def _curve(indices: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, recall, thresholds and hits of the pooled top-k pairs, ranked as `metrics.gap` does."""
    hits = np.take_along_axis(labels, indices, axis=1).ravel()  # [N·k]
    order = np.argsort(-scores.ravel(), kind="stable")  # video-major ravel: ties in video, then rank order
    hits, thresholds = hits[order], scores.ravel()[order]
    true_positives = np.cumsum(hits, dtype=np.float64)
    precision = true_positives / np.arange(1, hits.size + 1)
    total = int(labels.sum())
    recall = true_positives / total if total else np.zeros_like(true_positives)
    return precision, recall, thresholds.astype(np.float64), hits


def gap_curve(predictions: Any, labels: Any, *, top_k: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The precision/recall curve whose area is GAP@k: one point per pooled top-k prediction.

    Exactly the pairs `nextvlad.metrics.gap` ranks: each video's top-k predictions pooled and sorted by
    score (same tie order), so `sum(precision * diff(recall, prepend=0)) == gap(predictions, labels)`.

    Args:
        predictions: float scores `[N, C]`.
        labels: dense 0/1 labels `[N, C]`.
        top_k: predictions kept per video.

    Returns:
        `(precision, recall, thresholds)`, each float64 `[N·k]`: precision and recall after the i-th
        pooled prediction (recall over all positive labels, including those outside any top-k; all
        zeros when there is none), and that prediction's score.
    """
    from nextvlad import metrics

    indices, scores = metrics.top_k(predictions, top_k)  # [N, k]; validates predictions
    labels = np.asarray(labels)
    if labels.shape != np.shape(predictions):
        raise ValueError(
            f"labels shape {labels.shape} does not match predictions shape {np.shape(predictions)}"
        )
    return _curve(indices, scores, labels.astype(bool))[:3]


@dataclasses.dataclass
class Evaluation:
    """Everything computed from one set of predictions (see `compute_evaluation`).

    Attributes:
        metrics: `gap`, `hit_at_one`, `perr`, `map`, counts and `top_k`.
        average_precision: float64 `[C]` per-class AP (NaN without positives).
        positives: int64 `[C]` positive videos per class.
        top_k_count: int64 `[C]` videos whose top-k predictions include the class.
        precision, recall: the GAP@k curve (see `gap_curve`).
        top_indices, top_scores: each video's top-k classes `[N, k]` and scores, best first.
    """

    metrics: dict[str, Any]
    average_precision: np.ndarray
    positives: np.ndarray
    top_k_count: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    top_indices: np.ndarray
    top_scores: np.ndarray


def compute_evaluation(predictions: np.ndarray, labels: np.ndarray, *, top_k: int = 20) -> Evaluation:
    """GAP@k, Hit@1, PERR, mAP and the per-class statistics, with the `nextvlad.metrics` definitions.

    Works over blocks of rows (top-k, Hit@1, PERR) and on the `[N, k]` top-k lists (AP), so that memory
    beyond the inputs stays small; the results equal the `nextvlad.metrics` functions on whole arrays.

    Args:
        predictions: float scores `[N, C]`.
        labels: bool labels `[N, C]`.
        top_k: predictions kept per video for GAP and the per-class top-k counts.

    Returns:
        An `Evaluation`.
    """
    from nextvlad import metrics

    if predictions.shape != labels.shape or predictions.ndim != 2:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be the same [N, C]")
    labels = labels.astype(bool, copy=False)
    num_videos, num_classes = predictions.shape
    num_labels = labels.sum(axis=1)  # [N]
    indices, top_scores = block_top_k(predictions, top_k)  # [N, k]
    precision, recall, _, hits = _curve(indices, top_scores, labels)
    total = int(num_labels.sum())
    # metrics.gap's formula on the same ranked pairs: sum_i precision@i · hit_i / positives.
    gap = float(np.sum(precision * hits) / total) if total else 0.0

    # Hit@1 averages over all videos, PERR over labeled ones: sum block means weighted by their counts.
    hit_sum = perr_sum = 0.0
    for start in range(0, num_videos, _ROW_BLOCK):
        rows = slice(start, start + _ROW_BLOCK)
        hit_sum += metrics.hit_at_one(predictions[rows], labels[rows]) * labels[rows].shape[0]
        labeled = int(np.count_nonzero(num_labels[rows]))
        if labeled:
            perr_sum += metrics.perr(predictions[rows], labels[rows]) * labeled
    num_labeled = int(np.count_nonzero(num_labels))

    ap = metrics.average_precision_from_top_k(indices, top_scores, labels)  # [C], over the top-k
    valid = ap[~np.isnan(ap)]
    summary = {
        "gap": gap,
        "hit_at_one": hit_sum / num_videos if num_videos else 0.0,
        "perr": perr_sum / num_labeled if num_labeled else 0.0,
        # As metrics.mean_average_precision (top-k per video): classes without positives are left out.
        "map": float(valid.mean()) if valid.size else 0.0,
        "num_videos": int(num_videos),
        "num_labeled_videos": num_labeled,
        "num_labels": total,
        "num_classes": int(num_classes),
        "classes_with_positives": int(valid.size),
        "top_k": int(top_k),
    }
    return Evaluation(
        metrics=summary,
        average_precision=ap,
        positives=labels.sum(axis=0).astype(np.int64),
        top_k_count=np.bincount(indices.ravel(), minlength=num_classes).astype(np.int64),
        precision=precision,
        recall=recall,
        top_indices=indices,
        top_scores=top_scores,
    )
