"""Retrieval quality by label overlap: precision@k and mAP@k of an index over queries from its own videos.

A neighbour is relevant when it shares at least one label with the query; `evaluate_retrieval` gives the
exact definitions. `python -m pipelines.search --evaluate` prints and writes these numbers, and
`benchmarks/bench_retrieval_quality.py` compares transforms and features with them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.embeddings_io import RetrievalInputError
from pipelines.retrieval_index import RetrievalIndex, search_excluding


@dataclasses.dataclass(frozen=True)
class RetrievalQuality:
    """Label-overlap retrieval quality; see `evaluate_retrieval` for the definitions."""

    k: int
    num_queries: int  # queries that entered the means
    precision_at_k: float
    map_at_k: float
    chance_precision: float  # expected precision@k of a random ranking, for scale
    skipped_unlabeled: int  # sampled queries without labels (relevance undefined)
    skipped_no_relevant: int  # labelled queries sharing no label with any other indexed video

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _inverted_lists(labels: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """label -> sorted positions of the videos carrying it."""
    lengths = np.array([len(row) for row in labels])
    flat = np.concatenate(labels) if len(labels) else np.zeros(0, np.int32)
    positions = np.repeat(np.arange(len(labels)), lengths)
    order = np.argsort(flat, kind="stable")
    flat, positions = flat[order], positions[order]
    bounds = np.flatnonzero(np.diff(flat)) + 1
    return {
        int(group[0]): pos
        for group, pos in zip(np.split(flat, bounds), np.split(positions, bounds), strict=True)
        if len(group)
    }


def evaluate_retrieval(
    index: RetrievalIndex,
    *,
    k: int = 10,
    num_queries: int | None = 1000,
    seed: int = 0,
    query_ids: Sequence[str] | None = None,
) -> RetrievalQuality:
    """Label-overlap retrieval quality of `index` over queries sampled from its own videos.

    Each query is an indexed video; its neighbours are the k most similar *other* indexed videos (the
    query itself is excluded). A neighbour is relevant when it shares at least one label with the
    query. With rel_i ∈ {0, 1} the relevance of the i-th neighbour and R the number of relevant
    videos in the whole index (the query excluded):

    - P@i = (Σ_{j≤i} rel_j) / i; precision@k is the mean over queries of P@k.
    - AP@k = Σ_{i≤k} P@i · rel_i / min(k, R), which is 1 exactly when the first min(k, R) neighbours
      are all relevant; mAP@k is the mean over queries of AP@k.

    Queries without labels, or whose labels no other video shares (R = 0), are skipped and counted.

    Args:
        index: the index (its vectors are the queries).
        k: neighbours per query.
        num_queries: videos sampled (without replacement, seeded) as queries; None or ≥ N: all.
        seed: sampling seed.
        query_ids: use exactly these indexed videos as queries instead of sampling (to compare
            several indexes of the same videos on the same queries).

    Returns:
        The means and counts as a `RetrievalQuality`.
    """
    num_rows = len(index)
    if num_rows < 2:
        raise RetrievalInputError(f"evaluation needs at least 2 indexed videos, got {num_rows}")
    rng = np.random.default_rng(seed)
    if query_ids is not None:
        queries = np.array([index.position(video_id) for video_id in query_ids], dtype=np.int64)
    elif num_queries is None or num_queries >= num_rows:
        queries = np.arange(num_rows)
    else:
        queries = np.sort(rng.choice(num_rows, size=num_queries, replace=False))
    labelled = np.array([len(index.labels[q]) > 0 for q in queries], dtype=bool)
    skipped_unlabeled = int((~labelled).sum())
    queries = queries[labelled]
    inverted = _inverted_lists(index.labels)
    num_relevant = np.array(
        [
            np.unique(np.concatenate([inverted[int(label)] for label in index.labels[q]])).size - 1
            for q in queries
        ],
        dtype=np.int64,
    )  # [Q]: videos sharing a label with the query, the query excluded
    has_relevant = num_relevant > 0
    skipped_no_relevant = int((~has_relevant).sum())
    queries, num_relevant = queries[has_relevant], num_relevant[has_relevant]
    if len(queries) == 0:
        raise RetrievalInputError(
            "no sampled query shares a label with another indexed video; retrieval quality is undefined "
            "(are the labels missing from the scored Parquet?)"
        )
    _, neighbours = search_excluding(index, index.vectors[queries], k, exclude=queries)  # [Q, k]
    precisions, average_precisions = [], []
    for query, row, relevant_count in zip(queries, neighbours, num_relevant, strict=True):
        query_labels = index.labels[query]
        rel = np.array(
            [pos >= 0 and np.isin(index.labels[pos], query_labels).any() for pos in row], dtype=float
        )
        precision_at_i = np.cumsum(rel) / np.arange(1, k + 1)  # [k]: P@i
        precisions.append(precision_at_i[-1])
        average_precisions.append(float((precision_at_i * rel).sum() / min(k, relevant_count)))
    return RetrievalQuality(
        k=k,
        num_queries=len(queries),
        precision_at_k=float(np.mean(precisions)),
        map_at_k=float(np.mean(average_precisions)),
        chance_precision=float(np.mean(num_relevant / (num_rows - 1))),
        skipped_unlabeled=skipped_unlabeled,
        skipped_no_relevant=skipped_no_relevant,
    )
