"""What `trainer.evaluate` writes: the per-class CSV, the Kaggle submission, the picture, and where.

Every writer takes a local or gs:// path (`nextvlad.files`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from nextvlad import files
from trainer.evaluation import Evaluation, block_top_k
from trainer.segment_evaluation import SegmentEvaluation

DEFAULT_OUTPUT = "eval_metrics.json"
DEFAULT_SEGMENT_OUTPUT = "segment_eval_metrics.json"  # `--segments`: beside, not over, the video metrics
_PLOT_POINTS = 4000  # the PR curve has N·k points; the plot does not need more than this


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
    files.write_bytes(path, buffer.getvalue().encode())


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
    indices, scores = block_top_k(predictions, top_k)  # [N, k], best first, ties to the lower class id
    buffer = io.StringIO()
    # csv quotes an id only if it holds a comma or quote; YouTube-8M ids never do.
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["VideoId", "LabelConfidencePairs"])
    for video_id, row_classes, row_scores in zip(ids, indices, scores, strict=True):
        # The challenge's own format string: "%g" keeps 6 significant digits.
        pairs = " ".join("%i %g" % pair for pair in zip(row_classes, row_scores, strict=True))  # noqa: UP031
        writer.writerow([video_id, pairs])
    files.write_bytes(path, buffer.getvalue().encode())


def write_segment_per_class_csv(
    path: str, evaluation: SegmentEvaluation, *, label_names: dict[int, str] | None = None
) -> None:
    """One row per class with ratings: `class_id[,name],rated_segments,positives,ap` (segment AP; blank
    without a positive rating).

    Args:
        path: output CSV, local or gs://.
        evaluation: from `trainer.segment_evaluation.evaluate_segments`.
        label_names: optional `{class_id: name}`; adds the `name` column.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["class_id", *(["name"] if label_names is not None else []), "rated_segments", "positives", "ap"]
    )
    for c in np.flatnonzero(evaluation.rated_segments):
        ap = evaluation.average_precision[c]
        name = [label_names.get(int(c), "")] if label_names is not None else []
        ap_text = "" if np.isnan(ap) else f"{ap:.6f}"
        writer.writerow(
            [int(c), *name, int(evaluation.rated_segments[c]), int(evaluation.positives[c]), ap_text]
        )
    files.write_bytes(path, buffer.getvalue().encode())


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
    files.write_bytes(path, buffer.getvalue())


def output_paths(model: str, output: str | None, *, default: str = DEFAULT_OUTPUT) -> dict[str, str]:
    """Where the metrics JSON, per-class CSV and plot go: beside `output`, named after it.

    Args:
        model: the `--model` argument (a model_dir or a `.keras` file).
        output: the metrics JSON path, or None for `default` (`eval_metrics.json`) beside the model.
        default: the JSON's file name when `output` is None.

    Returns:
        `{"metrics": ..., "per_class": ..., "plot": ...}`.
    """
    if output is None:
        folder = (
            (model.rsplit("/", 1)[0] if "/" in model else ".")
            if model.endswith(".keras")
            else model.rstrip("/")
        )
        output = f"{folder}/{default}"
    stem = output[: -len(".json")] if output.endswith(".json") else output
    return {"metrics": output, "per_class": f"{stem}_per_class.csv", "plot": f"{stem}.png"}
