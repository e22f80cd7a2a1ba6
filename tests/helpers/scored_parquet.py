"""Scored Parquet files in the scoring pipeline's output format (docs/design.md, "Score output"), for tests.

Written directly with pyarrow so the retrieval tests do not depend on a trained model or the scoring
pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def scored_table(
    embeddings: np.ndarray,
    labels: Sequence[Sequence[int]],
    *,
    ids: Sequence[str] | None = None,
    fixed_size: bool = True,
    model_version: str = "test-model@0000000",
) -> pa.Table:
    """A table with the score output's columns; `embedding` as fixed_size_list or plain list<float>."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    count, dim = embeddings.shape
    ids = list(ids) if ids is not None else [f"vid{i:05d}" for i in range(count)]
    if fixed_size:
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dim)
    else:
        embedding = pa.array([row.tolist() for row in embeddings], pa.list_(pa.float32()))
    top = [sorted(row)[:3] for row in labels]
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "num_frames": pa.array(np.full(count, 30), pa.int32()),
            "labels": pa.array([list(row) for row in labels], pa.list_(pa.int32())),
            "top_classes": pa.array(top, pa.list_(pa.int32())),
            "top_scores": pa.array([[0.5] * len(row) for row in top], pa.list_(pa.float32())),
            "embedding": embedding,
            "model_version": pa.array([model_version] * count, pa.string()),
        }
    )


def write_scored_parquet(
    table: pa.Table, prefix: str | Path, *, num_shards: int = 2, row_group_size: int = 64
) -> list[Path]:
    """Writes `table` as `PREFIX-SSSSS-of-NNNNN.parquet` shards; returns their paths."""
    bounds = np.linspace(0, table.num_rows, num_shards + 1).astype(int)
    paths = []
    for shard in range(num_shards):
        path = Path(f"{prefix}-{shard:05d}-of-{num_shards:05d}.parquet")
        path.parent.mkdir(parents=True, exist_ok=True)
        start, stop = bounds[shard], bounds[shard + 1]
        pq.write_table(table.slice(start, stop - start), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def clustered_corpus(
    num_rows: int, dim: int, *, num_classes: int = 6, seed: int = 0
) -> tuple[np.ndarray, list[list[int]]]:
    """Anisotropic embeddings with one class per cluster plus an occasional second label.

    Returns:
        `(embeddings [N, dim] float32, labels)`: the cluster centres differ along a few directions and
        the per-dimension scales span two orders of magnitude, so whitening matters.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 2.0
    classes = rng.integers(0, num_classes, size=num_rows)
    scales = np.geomspace(3.0, 0.05, dim)  # anisotropic noise
    mixing = np.linalg.qr(rng.normal(size=(dim, dim)))[0]  # rotate so no axis is special
    embeddings = (centres[classes] + rng.normal(size=(num_rows, dim)) * scales) @ mixing + 5.0
    labels = [[int(c)] + ([int((c + 1) % num_classes)] if rng.random() < 0.2 else []) for c in classes]
    return embeddings.astype(np.float32), labels
