"""Evaluate a trained NeXtVLAD model on YouTube-8M TFRecords: metrics, per-class AP, plots, submission.

Run (a model trained by `trainer.train` on video-level data, evaluated on the held-out files):

    python -m trainer.evaluate --model runs/video \\
        --data '../shared/data/yt8m-2018-video-level/validate01[0-2][0-9].tfrecord' \\
        --label_names ../shared/data/label_names_2018.csv --submission runs/video/submission.csv

It prints GAP@20, Hit@1, PERR, mAP and the number of videos, and writes, by default beside the model
(`--output` moves all three; the CSV and PNG are named after the JSON):

- `eval_metrics.json`: the metrics and what was evaluated (not `metrics.json`, which is the trainer's
  own final evaluation and is left alone);
- `eval_metrics_per_class.csv`: `class_id[,name],positives,top_k_count,ap` for every class;
- `eval_metrics.png`: AP against class frequency, and the precision/recall curve behind GAP@k.

`--submission` also writes the 2018 Kaggle CSV (`VideoId,LabelConfidencePairs`, top 20 as `"%i %g"`).

Memory: the model runs batch by batch, and the evaluation keeps `[N, C]` float32 scores plus `[N, C]`
boolean labels: about 19 KB per video with 3862 classes (190 MB for 10k videos, 1.9 GB for 100k), on
top of ~1 GB for TensorFlow and the model. The metrics run over blocks of 2048 videos and over the
`[N, 20]` top-k lists, so their working memory stays small whatever N is. For millions of videos,
evaluate shards separately (GAP pools over videos, so average per-shard GAPs only as an approximation).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from nextvlad import records
from nextvlad.serving import (
    FRAME_INPUTS,
    VIDEO_INPUTS,
    InvalidModelError,
    ModelInfo,
    check_first_record,
    describe_id_layout,
    describe_model,
    load_model,
    resolve_model_file,
)

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "eval_metrics.json"
# Inputs of the two kinds of serving model (see `nextvlad.model.model_inputs`).
DEFAULT_BATCH_SIZE = {"frame": 64, "video": 1024}  # frame batches are ~1.4 MB per video once decoded
# Metrics run over blocks of rows, so their temporaries stay small next to the [N, C] scores.
_ROW_BLOCK = 2048
_FRAME_BUCKET = 32  # frame-level batches are padded to a multiple of this many frames
_PLOT_POINTS = 4000  # the PR curve has N·k points; the plot does not need more than this


# --------------------------------------------------------------------------------------------------
# Model loading
# --------------------------------------------------------------------------------------------------


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def load_serving_model(model: str) -> tuple[Any, ModelInfo]:
    """Loads a NeXtVLAD serving model and reads what evaluation needs from it (`nextvlad.serving`).

    Args:
        model: a model_dir (holding `model.keras`) or a `.keras` file, local or gs://.

    Returns:
        `(keras_model, info)`: input format, classes and the model's own frame limit.

    Raises:
        FileNotFoundError: no model there.
        ValueError: the file is not a Keras model, not a NeXtVLAD serving model, or saved before models
            owned their preprocessing (the message gives the re-export command).
    """
    try:
        path = resolve_model_file(model)
    except InvalidModelError as e:
        raise FileNotFoundError(str(e)) from None
    loaded = load_model(path)
    return loaded, describe_model(loaded, path)


# --------------------------------------------------------------------------------------------------
# Streaming prediction
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
    """Model scores for every video of an evaluation set, in the reader's order.

    `make_dataset` interleaves the files (deterministically), so rows are not grouped by file.

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


def _stable_shapes(inputs: dict[str, np.ndarray], batch_size: int, max_frames: int) -> dict[str, np.ndarray]:
    """Pads a batch to one of a few shapes, so compiled predict functions are traced a few times only.

    Each frame-level batch is only as long as its longest video, so T takes up to `max_frames` values,
    and the last batch is short; every new shape costs a retrace (seconds for the paper's model, and
    every time on jit backends). T is rounded up to a multiple of `_FRAME_BUCKET` (the padded frames
    are masked by `num_frames`, so scores do not change) and a short batch after full ones is filled
    with copies of its last video, whose scores are dropped.
    """
    rows = len(next(iter(inputs.values())))
    out = dict(inputs)
    if "rgb" in out:
        frames = out["rgb"].shape[1]
        target = max(frames, min(-(-frames // _FRAME_BUCKET) * _FRAME_BUCKET, max_frames))
        for name in ("rgb", "audio"):
            out[name] = np.pad(out[name], ((0, 0), (0, target - frames), (0, 0)))  # [B, T', D]
    if rows < batch_size:
        out = {
            name: np.concatenate([x, np.repeat(x[-1:], batch_size - rows, axis=0)]) for name, x in out.items()
        }
    return out


def check_records(data_pattern: str, info: ModelInfo) -> None:
    """Fails fast, with a useful message, when the first record is not what the model takes.

    Raises:
        FileNotFoundError: the pattern matches no file.
        ValueError: the files are empty, or hold records of the other kind.
    """
    from nextvlad import yt8m

    records = yt8m.peek_records(data_pattern, 1)
    if not records:
        raise ValueError(f"The files matching {data_pattern!r} hold no records; nothing to evaluate")
    layout = check_first_record(records[0], info, source=repr(data_pattern))
    logger.info("records: %s-level, %s", info.input_format, describe_id_layout(layout))


def predict_dataset(
    model: Any,
    data_pattern: str,
    *,
    input_format: str,
    batch_size: int | None = None,
    max_frames: int = 300,
    progress: bool = True,
) -> Predictions:
    """Runs `model` over every record of `data_pattern`, batch by batch, keeping scores and labels.

    Args:
        model: a NeXtVLAD serving model (dict inputs, dict outputs with `predictions [B, C]`).
        data_pattern: TFRecord glob, local or gs://.
        input_format: `"frame"` or `"video"`; must match the model's inputs.
        batch_size: videos per batch (default 64 for frame level, 1024 for video level).
        max_frames: frames read per video (the model's own limit; it would drop later frames anyway).
        progress: show a progress bar.

    Returns:
        The ids, scores and labels of all videos, in the reader's (deterministic) order.
    """
    import keras
    import tensorflow as tf

    from nextvlad import yt8m

    num_classes = int(model.output["predictions"].shape[-1])
    batch_size = batch_size or DEFAULT_BATCH_SIZE[input_format]
    files = yt8m.expand_file_pattern(data_pattern)
    # Local files are counted from their framing in milliseconds; remote ones would need a full read.
    total = yt8m.count_records(files) if all("://" not in f for f in files) else None
    dataset = yt8m.make_dataset(
        files,
        input_format=input_format,
        batch_size=batch_size,
        num_classes=num_classes,
        max_frames=max_frames,
        include_ids=True,
    )
    capacity = total if total is not None else 4 * batch_size
    scores = _Rows(capacity, num_classes, np.float32)
    labels = _Rows(capacity, num_classes, np.bool_)
    ids: list[str] = []
    # An animated bar in a terminal; in a log file one line at the end instead of thousands of updates.
    bar = (
        keras.utils.Progbar(total, unit_name="video", verbose=1 if sys.stdout.isatty() else 2)
        if progress
        else None
    )
    try:
        for features, batch_labels in dataset:
            batch_ids = features.pop("id").numpy()
            inputs = {name: value.numpy() for name, value in features.items()}
            rows = len(batch_ids)
            inputs = _stable_shapes(inputs, batch_size if ids else rows, max_frames)
            out = model.predict_on_batch(inputs)
            scores.extend(np.asarray(out["predictions"][:rows], dtype=np.float32))  # [B, C]
            labels.extend(batch_labels.numpy() > 0.5)  # [B, C]
            ids.extend(i.decode("utf-8", errors="replace") for i in batch_ids)
            if bar is not None:
                bar.update(len(ids))
    except tf.errors.InvalidArgumentError as e:
        # The reader's checks are tf.debugging assertions; their own message is the useful part.
        assertion = re.search(r"assertion failed: \[([^\]]+)\]", e.message)
        raise ValueError(
            f"Could not read a record of {data_pattern!r} as {input_format}-level YouTube-8M data for this "
            f"{num_classes}-class model (in the batch after the first {len(ids)} videos): "
            f"{assertion.group(1) if assertion else e.message}. The model predicts {num_classes} classes: "
            "evaluate it on records of the same kind, labeled with the vocabulary it was trained on."
        ) from None
    if not ids:
        raise ValueError(f"The files matching {data_pattern!r} hold no records; nothing to evaluate")
    if bar is not None and total is None:
        bar.update(len(ids), finalize=True)  # with a known total, reaching it already finalized the bar
    return Predictions(ids=ids, scores=scores.array(), labels=labels.array())


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _block_top_k(predictions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
    indices, top_scores = _block_top_k(predictions, top_k)  # [N, k]
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


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


def write_per_class_csv(
    path: str, evaluation: Evaluation, *, label_names: dict[int, str] | None = None
) -> None:
    """One row per class: `class_id[,name],positives,top_k_count,ap` (ap blank without positives).

    Args:
        path: output CSV, local or gs://.
        evaluation: from `compute_evaluation`.
        label_names: optional `{class_id: name}`; adds the `name` column.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["class_id", *(["name"] if label_names is not None else []), "positives", "top_k_count", "ap"]
    )
    for c, ap in enumerate(evaluation.average_precision):
        name = [label_names.get(c, "")] if label_names is not None else []
        ap_text = "" if np.isnan(ap) else f"{ap:.6f}"
        writer.writerow([c, *name, int(evaluation.positives[c]), int(evaluation.top_k_count[c]), ap_text])
    _write_text(path, buffer.getvalue())


def write_submission(path: str, ids: Sequence[str], predictions: np.ndarray, *, top_k: int = 20) -> None:
    """The 2018 Kaggle YouTube-8M submission: `VideoId,LabelConfidencePairs`, top-k `"%i %g"` pairs.

    Args:
        path: output CSV, local or gs://.
        ids: video ids, `N`.
        predictions: float scores `[N, C]`.
        top_k: pairs per video (20 in the challenge).
    """
    if len(ids) != predictions.shape[0]:
        raise ValueError(f"{len(ids)} ids for {predictions.shape[0]} rows of predictions; they must match")
    indices, scores = _block_top_k(predictions, top_k)  # [N, k], best first, ties to the lower class id
    _make_parent(path)
    with _gfile().GFile(path, "w") as f:
        # csv quotes an id only if it holds a comma or quote; YouTube-8M ids never do.
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["VideoId", "LabelConfidencePairs"])
        for video_id, row_classes, row_scores in zip(ids, indices, scores, strict=True):
            # The challenge's own format string: "%g" keeps 6 significant digits.
            pairs = " ".join("%i %g" % pair for pair in zip(row_classes, row_scores, strict=True))  # noqa: UP031
            writer.writerow([video_id, pairs])


def plot_evaluation(path: str, evaluation: Evaluation, *, label_names: dict[int, str] | None = None) -> None:
    """PNG with two panels: per-class AP against class frequency, and the GAP@k precision/recall curve.

    Args:
        path: output PNG, local or gs://.
        evaluation: from `compute_evaluation`.
        label_names: optional `{class_id: name}`, used to label the most frequent classes.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    m = evaluation.metrics
    k = m["top_k"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), layout="constrained")

    has = evaluation.positives > 0
    x, y = evaluation.positives[has], evaluation.average_precision[has]
    left.scatter(x, y, s=9, alpha=0.4, color="tab:blue", edgecolors="none", label="one class")
    if x.size:
        # Counts are small integers, so points pile up at the left: a binned mean shows the trend.
        edges = 2.0 ** np.arange(0, np.ceil(np.log2(x.max())) + 2)  # 1, 2, 4, ...
        which = np.digitize(x, edges) - 1
        bins = np.unique(which)
        centers = [np.sqrt(edges[b] * edges[b + 1]) for b in bins]
        means = [y[which == b].mean() for b in bins]
        left.plot(centers, means, "-o", color="tab:orange", markersize=4, label="mean AP per ×2 bin")
    left.axhline(m["map"], color="tab:red", linestyle="--", linewidth=1.2, label=f"mAP = {m['map']:.3f}")
    left.set_xscale("log")
    # Plain counts at 1-2-5 steps: matplotlib's default labels the minor ticks of a short log range
    # in scientific notation, and they overprint.
    left.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    left.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_ylim(-0.02, 1.02)
    left.set_xlabel("positive videos in the evaluation set (log scale)")
    left.set_ylabel("average precision")
    left.set_title(
        f"Per-class AP ({m['classes_with_positives']:,} of {m['num_classes']:,} classes have positives)"
    )
    left.grid(True, which="major", alpha=0.3)
    if x.size:
        left.legend(loc="upper left", fontsize=8)
        # Name the most frequent classes: they dominate GAP, so they are the ones people ask about.
        # They crowd the top right, so the points get numbers and the names go in a key.
        class_ids = np.flatnonzero(has)
        top = np.argsort(-x, kind="stable")[:5]
        left.scatter(x[top], y[top], s=22, facecolors="none", edgecolors="black", linewidths=0.8)
        key = []
        for rank, i in enumerate(top, start=1):
            name = (label_names or {}).get(int(class_ids[i])) or f"class {class_ids[i]}"
            left.annotate(str(rank), (x[i], y[i]), textcoords="offset points", xytext=(3, 3), fontsize=7)
            key.append(f"{rank}. {name[:24]}: {x[i]:,} videos, AP {y[i]:.2f}")
        left.text(
            0.98,
            0.06,
            "most frequent classes\n" + "\n".join(key),
            transform=left.transAxes,
            ha="right",
            va="bottom",
            multialignment="left",
            fontsize=8,
            bbox=dict(boxstyle="round,pad=0.4", facecolor="white", edgecolor="0.8", alpha=0.9),
        )

    precision, recall = evaluation.precision, evaluation.recall
    if precision.size > _PLOT_POINTS:
        keep = np.unique(np.linspace(0, precision.size - 1, _PLOT_POINTS).astype(np.int64))
        precision, recall = precision[keep], recall[keep]
    right.plot(recall, precision, color="tab:green", linewidth=1.6)
    right.fill_between(recall, precision, alpha=0.15, color="tab:green", step=None)
    if recall.size:
        right.plot(recall[-1], precision[-1], "o", color="tab:green")
        right.annotate(
            f"all {m['num_videos'] * k:,} top-{k} predictions\n"
            f"recall {recall[-1]:.3f}, precision {precision[-1]:.3f}",
            (recall[-1], precision[-1]),
            textcoords="offset points",
            xytext=(-8, 12),
            ha="right",
            fontsize=8,
        )
    right.set_xlim(0, 1)
    right.set_ylim(0, 1.02)
    right.set_xlabel(f"recall (of all {m['num_labels']:,} ground-truth labels)")
    right.set_ylabel("precision")
    right.set_title(f"Pooled top-{k} predictions: area = GAP@{k} = {m['gap']:.3f}")
    right.grid(True, alpha=0.3)

    fig.suptitle(
        f"{m['num_videos']:,} videos · GAP@{k} {m['gap']:.3f} · Hit@1 {m['hit_at_one']:.3f} · "
        f"PERR {m['perr']:.3f} · mAP {m['map']:.3f}"
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    _make_parent(path)
    with _gfile().GFile(path, "wb") as f:
        f.write(buffer.getvalue())


def _make_parent(path: str) -> None:
    if "://" not in path and "/" in path:
        _gfile().makedirs(path.rsplit("/", 1)[0])


def _write_text(path: str, text: str) -> None:
    _make_parent(path)
    with _gfile().GFile(path, "w") as f:
        f.write(text)


def output_paths(model: str, output: str | None) -> dict[str, str]:
    """Where the metrics JSON, per-class CSV and plot go: beside `output`, named after it.

    Args:
        model: the `--model` argument (a model_dir or a `.keras` file).
        output: the metrics JSON path, or None for `eval_metrics.json` beside the model.

    Returns:
        `{"metrics": ..., "per_class": ..., "plot": ...}`.
    """
    if output is None:
        folder = (
            (model.rsplit("/", 1)[0] if "/" in model else ".")
            if model.endswith(".keras")
            else model.rstrip("/")
        )
        output = f"{folder}/{DEFAULT_OUTPUT}"
    stem = output[: -len(".json")] if output.endswith(".json") else output
    return {"metrics": output, "per_class": f"{stem}_per_class.csv", "plot": f"{stem}.png"}


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def evaluate(
    model_path: str,
    data_pattern: str,
    *,
    output: str | None = None,
    label_names: str | None = None,
    batch_size: int | None = None,
    input_format: str | None = None,
    submission: str | None = None,
    top_k: int = 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluates a trained model on TFRecords and writes the metrics JSON, per-class CSV and plot.

    Args:
        model_path: a model_dir written by `trainer.train` (uses its `model.keras`) or a `.keras` file.
        data_pattern: TFRecord glob (local or gs://) of labeled YouTube-8M records.
        output: metrics JSON path; default `eval_metrics.json` beside the model. The per-class CSV
            (`<stem>_per_class.csv`) and plot (`<stem>.png`) go beside it.
        label_names: `label_id,label_name` CSV adding class names to the CSV and plot.
        batch_size: videos per batch (default 64 frame level, 1024 video level).
        input_format: `"frame"` or `"video"`; default (and only valid value): what the model takes.
        submission: also write the Kaggle 2018 submission CSV here.
        top_k: predictions per video for GAP, the per-class counts and the submission.
        progress: show a progress bar while predicting.

    Returns:
        The metrics written to the JSON: `gap`, `hit_at_one`, `perr`, `map`, `num_videos`,
        `num_labeled_videos`, `num_labels`, `num_classes`, `classes_with_positives`, `top_k`, plus
        `model`, `data`, `input_format`, `seconds` and `outputs` (the files written).

    Raises:
        FileNotFoundError: no model, no file matching `data_pattern`, or no label names file.
        ValueError: not a NeXtVLAD serving model, records of the wrong kind, or a bad argument.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if input_format not in (None, "frame", "video"):
        raise ValueError(f"input_format must be 'frame' or 'video', got {input_format!r}")
    start = time.perf_counter()
    names = records.read_label_names(label_names) if label_names else None
    model, info = load_serving_model(model_path)
    model_format = info.input_format
    if input_format is not None and input_format != model_format:
        inputs = ", ".join(sorted([*FRAME_INPUTS, "num_frames"] if model_format == "frame" else VIDEO_INPUTS))
        raise ValueError(
            f"input_format={input_format!r}, but the model at {model_path!r} takes {model_format}-level "
            f"inputs ({inputs}); omit input_format (it is read from the model) or evaluate a "
            f"{input_format}-level model"
        )
    path = info.path
    check_records(data_pattern, info)

    predictions = predict_dataset(
        model,
        data_pattern,
        input_format=model_format,
        batch_size=batch_size,
        max_frames=info.max_frames or 300,
        progress=progress,
    )
    logger.info("predicted %d videos; computing metrics", len(predictions))
    evaluation = compute_evaluation(predictions.scores, predictions.labels, top_k=top_k)
    if evaluation.metrics["num_labels"] == 0:
        logger.warning(
            "The records in %r carry no labels: every metric is 0. (Use --submission to score unlabeled "
            "test data.)",
            data_pattern,
        )

    paths = output_paths(model_path, output)
    write_per_class_csv(paths["per_class"], evaluation, label_names=names)
    plot_evaluation(paths["plot"], evaluation, label_names=names)
    if submission:
        write_submission(submission, predictions.ids, predictions.scores, top_k=top_k)
        paths["submission"] = submission
    result = {
        **evaluation.metrics,
        "model": path,
        "data": data_pattern,
        "input_format": model_format,
        "seconds": round(time.perf_counter() - start, 3),
        "outputs": paths,
    }
    _write_text(paths["metrics"], json.dumps(result, indent=2) + "\n")
    return result


def format_summary(metrics: dict[str, Any]) -> str:
    """A small two-column table of the headline metrics, for the terminal."""
    k = metrics.get("top_k", 20)
    rows = [
        (f"GAP@{k}", f"{metrics['gap']:.4f}"),
        ("Hit@1", f"{metrics['hit_at_one']:.4f}"),
        ("PERR", f"{metrics['perr']:.4f}"),
        ("mAP", f"{metrics['map']:.4f}"),
        ("videos", f"{metrics['num_videos']:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = "-" * (width + value_width + 3)
    lines = [f"{'metric':<{width}}   {'value':>{value_width}}", rule]
    lines += [f"{name:<{width}}   {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description="Evaluate a trained NeXtVLAD model on YouTube-8M TFRecords (GAP@20, Hit@1, PERR, mAP).",
    )
    parser.add_argument("--model", required=True, help="model_dir written by trainer.train, or a .keras file")
    parser.add_argument("--data", required=True, help="TFRecord glob, local or gs:// (quote it in the shell)")
    parser.add_argument(
        "--output",
        help=f"metrics JSON (default: {DEFAULT_OUTPUT} beside the model); the per-class CSV and PNG go "
        "beside it as <stem>_per_class.csv and <stem>.png",
    )
    parser.add_argument("--label_names", help="CSV with label_id,label_name, e.g. label_names_2018.csv")
    parser.add_argument("--batch_size", type=int, help="videos per batch (default 64 frame, 1024 video)")
    parser.add_argument(
        "--input_format", choices=("frame", "video"), help="default: what the model's inputs are"
    )
    parser.add_argument("--submission", help="also write the Kaggle 2018 submission CSV here")
    parser.add_argument("--top_k", type=int, default=20, help="predictions per video for GAP (default 20)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = evaluate(
            args.model,
            args.data,
            output=args.output,
            label_names=args.label_names,
            batch_size=args.batch_size,
            input_format=args.input_format,
            submission=args.submission,
            top_k=args.top_k,
            progress=not args.quiet,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_summary(result))
    print()
    for kind, path in result["outputs"].items():
        print(f"{kind:>10}: {path}")
    print(f"({result['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
