"""The demo's pictures: the training curve and a 2-D map of the embeddings."""

from __future__ import annotations

import csv
import glob
from pathlib import Path


def plot_training_curve(history_csv: Path, output: Path) -> Path | None:
    """Loss and GAP per epoch from the trainer's history.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history_csv.exists():
        return None
    with history_csv.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epochs = [int(float(row["epoch"])) if "epoch" in row else i + 1 for i, row in enumerate(rows)]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    gap_axis = loss_axis.twinx()
    for key in rows[0]:
        values = [float(row[key]) if row[key] not in ("", None) else float("nan") for row in rows]
        if key == "epoch":
            continue
        if "loss" in key:
            loss_axis.plot(epochs, values, marker="o", label=key)
        elif "gap" in key:
            gap_axis.plot(epochs, values, marker="s", linestyle="--", label=key)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    gap_axis.set_ylabel("GAP@20")
    gap_axis.set_ylim(0, 1)
    handles = loss_axis.get_legend_handles_labels()
    more = gap_axis.get_legend_handles_labels()
    loss_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="center right")
    loss_axis.set_title("Training curve")
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def plot_embeddings(
    scores_pattern: str, label_names_csv: Path, output: Path, *, max_points: int = 4000
) -> Path:
    """A 2-D PCA map of the pooled embeddings: single-label videos coloured by their label.

    Multi-label videos sit between their labels' clusters; they are drawn in grey behind the others.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pyarrow.parquet as pq

    tables = [
        pq.read_table(path, columns=["embedding", "labels"]) for path in sorted(glob.glob(scores_pattern))
    ]
    embeddings = np.concatenate(
        [np.asarray(t.column("embedding").to_pylist(), dtype="float32") for t in tables]
    )[:max_points]
    labels = [row for t in tables for row in t.column("labels").to_pylist()][:max_points]
    centred = embeddings - embeddings.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True) + 1e-8
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T  # [N, 2]
    from nextvlad.yt8m import parse_label_names

    names = parse_label_names(label_names_csv.read_text(), source=str(label_names_csv))
    single = np.array([len(row) == 1 for row in labels])
    first = np.array([row[0] if len(row) == 1 else -1 for row in labels])
    figure, axis = plt.subplots(figsize=(8, 6.5))
    axis.scatter(points[~single, 0], points[~single, 1], s=4, color="0.85", label="several labels")
    cmap = plt.get_cmap("tab20")
    for i, label in enumerate(sorted(set(first[single].tolist()))):
        chosen = first == label
        axis.scatter(
            points[chosen, 0], points[chosen, 1], s=9, color=cmap(i % 20), label=names.get(label, str(label))
        )
    axis.set_title("Video embeddings, 2-D PCA (single-label videos coloured by label)")
    axis.legend(markerscale=2.5, fontsize=7, ncol=2, loc="best")
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output
