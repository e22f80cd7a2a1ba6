"""Videos similar to a given one, from an index built by `pipelines.index`; and retrieval quality.

Neighbours of an indexed video (similarity = cosine of the index's L2-normalised vectors, in the space
chosen by `pipelines.index --transform`):

    python -m pipelines.search --index runs/index --id VIDEO_ID -k 10 \\
        --label_names ../shared/data/label_names_2018.csv

A video that is not in the index, taken from a scored Parquet file and passed through the same saved
tensorflow-transform function (`INDEX/transform_fn`) as the corpus:

    python -m pipelines.search --index runs/index --query_parquet scores/new-00000-of-00001.parquet \\
        --query_id VIDEO_ID

Retrieval quality by label overlap over sampled queries (see `evaluate_retrieval`), printed and
written as JSON (default `INDEX/retrieval_quality.json`):

    python -m pipelines.search --index runs/index --evaluate --queries 1000 -k 10

From Python: `build_index`, `save_index`, `load_index`, `search`, `transform_embeddings`, `index_transform`,
`evaluate_retrieval`.
"""

from __future__ import annotations

import os

# tensorflow_transform (imported lazily by `transform_embeddings`) switches tf.keras to Keras 2 unless
# this is set before TensorFlow is first imported (docs/design.md, "Known traps of this stack").
os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402

from nextvlad.records import read_label_names  # noqa: E402
from pipelines.embeddings_io import (  # noqa: E402
    RetrievalInputError,
    import_tensorflow_transform,
    read_query_embedding,
    read_table,
)

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "ivf", "ivfpq")
# How `pipelines.index` maps an embedding x to an index vector (μ, V: corpus mean and top principal
# directions; λ: the variance along each). The saved tensorflow-transform function applies the same map
# to query embeddings; `index.json` names it under "transform".
TRANSFORMS = {
    "whiten": "PCA to --dim, each component divided by its std, L2: normalize(diag(λ)^-½·p), p = Vᵀ(x − μ)",
    "pca": "PCA to --dim, L2 (no whitening): normalize(p), p = Vᵀ(x − μ)",
    "pca_power": "PCA to --dim, signed square root of each coordinate, L2: normalize(sign(p)·√|p|)",
    "raw": "L2 only (no centring, no projection; --dim does not apply): normalize(x)",
}
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
METADATA_FILE = "index.json"
TRANSFORM_DIR = "transform_fn"
_PQ_BITS = 8  # 256 centroids per sub-quantizer: faiss's fast path
_MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per k-means centroid
_RERANK_CHUNK = 256  # queries re-ranked at a time
_DEFAULT_RERANK = 10  # ivfpq: 10·k candidates re-scored (recall close to ivf's at the same nprobe)


@dataclasses.dataclass(frozen=True)
class IndexOptions:
    """The nearest-neighbour structure; every field is resolved (no None) once built."""

    index_type: str = "flat"  # flat: exact inner product; ivf: inverted lists; ivfpq: + product quantizer
    nlist: int = 0  # inverted lists (k-means cells) for ivf/ivfpq; 0 for flat
    nprobe: int = 0  # cells visited per query for ivf/ivfpq: the speed/recall knob; 0 for flat
    pq_m: int = 0  # sub-quantizers for ivfpq (bytes per vector); must divide the dimension; 0 otherwise
    # ivfpq: rerank·k candidates per query are re-scored exactly with the stored vectors, which undoes
    # most of the product quantizer's error for a few hundred dot products; 0 for the others (exact).
    rerank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_index_options(
    num_rows: int,
    dim: int,
    *,
    index_type: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    rerank: int | None = None,
) -> IndexOptions:
    """Checks the index options against the corpus and fills in defaults.

    Defaults: `nlist` ≈ 4·√N (a power of two, with at least 39 training points per cell); `nprobe`
    = max(nlist/64, min(nlist, 32)) (BENCHMARKS.md: recall@10 ≥ 0.95 at ≥ 10× the exact speed on 1M
    clustered vectors); `pq_m` = the largest divisor of `dim` that is at most dim/4 (one byte per 4
    dimensions); `rerank` = 10 for ivfpq.

    Raises:
        RetrievalInputError: an unknown type, or a value the corpus cannot support.
    """
    if index_type not in INDEX_TYPES:
        raise RetrievalInputError(f"--index_type {index_type!r} is not one of {list(INDEX_TYPES)}")
    if index_type == "flat":
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("pq_m", pq_m), ("rerank", rerank)):
            if value is not None:
                logger.warning("--%s=%s is ignored for the exact flat index", name, value)
        return IndexOptions()
    max_nlist = max(1, num_rows // _MIN_POINTS_PER_CENTROID)
    if nlist is None:
        nlist = min(max_nlist, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(num_rows)))))
    if not 1 <= nlist <= num_rows:
        raise RetrievalInputError(
            f"--nlist {nlist} must be between 1 and the number of rows ({num_rows}); about 4·√N "
            f"(here {int(4 * math.sqrt(num_rows))}) is a good start"
        )
    if nprobe is None:
        nprobe = max(nlist // 64, min(nlist, 32))
    if not 1 <= nprobe <= nlist:
        raise RetrievalInputError(f"--nprobe {nprobe} must be between 1 and --nlist ({nlist})")
    if index_type == "ivfpq":
        if pq_m is None:
            pq_m = max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)
        if pq_m < 1 or dim % pq_m:
            raise RetrievalInputError(f"--pq_m {pq_m} must divide the vector dimension {dim}")
        if num_rows < 2**_PQ_BITS:
            raise RetrievalInputError(
                f"an ivfpq index needs at least {2**_PQ_BITS} rows to train its quantizer, got {num_rows}; "
                "use --index_type flat or ivf"
            )
        rerank = _DEFAULT_RERANK if rerank is None else rerank
        if rerank < 0:
            raise RetrievalInputError(f"--rerank {rerank} must be 0 (off) or a positive candidate factor")
    else:
        for name, value in (("pq_m", pq_m), ("rerank", rerank)):
            if value is not None:
                logger.warning("--%s=%s is ignored for --index_type %s", name, value, index_type)
    return IndexOptions(index_type=index_type, nlist=nlist, nprobe=nprobe, pq_m=pq_m or 0, rerank=rerank or 0)


@dataclasses.dataclass
class RetrievalIndex:
    """A nearest-neighbour index over L2-normalised vectors, with each position's id and labels."""

    faiss_index: faiss.Index  # inner-product index; position i is row i below
    ids: np.ndarray  # [N] video ids (object array of str)
    labels: list[np.ndarray]  # N int arrays: ground-truth labels (may be empty)
    vectors: np.ndarray  # [N, d] float32: the indexed vectors (exact, also for ivfpq)
    options: IndexOptions
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)  # index.json when loaded

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._positions

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        return {video_id: position for position, video_id in enumerate(self.ids)}

    def position(self, video_id: str) -> int:
        """The index position of `video_id`.

        Raises:
            RetrievalInputError: the id is not indexed.
        """
        try:
            return self._positions[video_id]
        except KeyError:
            raise RetrievalInputError(
                f"unknown query id {video_id!r}: not among the {len(self)} indexed videos; for a video "
                "outside the index use --query_parquet FILE --query_id ID"
            ) from None

    def set_nprobe(self, nprobe: int) -> None:
        """Changes the number of cells an IVF index visits per query (ignored for flat)."""
        if self.options.index_type == "flat":
            return
        if not 1 <= nprobe <= self.options.nlist:
            raise RetrievalInputError(f"--nprobe {nprobe} must be between 1 and nlist ({self.options.nlist})")
        faiss.extract_index_ivf(self.faiss_index).nprobe = nprobe
        self.options = dataclasses.replace(self.options, nprobe=nprobe)

    def set_rerank(self, rerank: int) -> None:
        """Changes how many candidates per neighbour an ivfpq index re-scores exactly (0: none)."""
        if self.options.index_type != "ivfpq":
            return
        if rerank < 0:
            raise RetrievalInputError(f"--rerank {rerank} must be 0 (off) or a positive candidate factor")
        self.options = dataclasses.replace(self.options, rerank=rerank)


def build_index(
    vectors: np.ndarray,
    *,
    ids: Sequence[str],
    labels: Sequence[Sequence[int]] | None = None,
    index_type: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    rerank: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> RetrievalIndex:
    """Builds an inner-product faiss index (cosine for L2-normalised vectors).

    Args:
        vectors: `[N, d]` float vectors, normally L2-normalised.
        ids: N video ids (position i ↔ `ids[i]`).
        labels: N label lists (for evaluation and display); empty lists when None.
        index_type: `flat` (exact), `ivf` (inverted lists, exact distances within visited cells) or
            `ivfpq` (inverted lists + product-quantised codes: ~d/pq_m times less memory, lossy).
        nlist, nprobe, pq_m, rerank: see `resolve_index_options` (defaults from the corpus size).
        train_size: rows sampled to train the IVF cells and PQ codebooks; default 64·nlist (at least
            all rows when fewer), enough for k-means to place the cells.
        seed: sampling and k-means seed.

    Returns:
        The built index (in memory; `save_index` writes it).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [N, d]
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise RetrievalInputError(
            f"vectors must be [N, d] with one row per id; got shape {vectors.shape} for {len(ids)} ids"
        )
    num_rows, dim = vectors.shape
    options = resolve_index_options(
        num_rows, dim, index_type=index_type, nlist=nlist, nprobe=nprobe, pq_m=pq_m, rerank=rerank
    )
    if options.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if options.index_type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, options.nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(
                quantizer, dim, options.nlist, options.pq_m, _PQ_BITS, faiss.METRIC_INNER_PRODUCT
            )
        index.cp.seed = seed
        train_size = min(num_rows, train_size or max(64 * options.nlist, 2**_PQ_BITS * 40))
        sample = np.random.default_rng(seed).choice(num_rows, size=train_size, replace=False)
        start = time.perf_counter()
        index.train(vectors[np.sort(sample)])
        logger.info(
            "trained %s on %d rows in %.1f s", options.index_type, train_size, time.perf_counter() - start
        )
        index.nprobe = options.nprobe
        # The quantizer must outlive this function: faiss holds only a raw pointer to it.
        index.own_fields = True
        quantizer.this.disown()
    index.add(vectors)
    label_arrays = [
        np.asarray(row, dtype=np.int32) for row in (labels if labels is not None else [()] * num_rows)
    ]
    return RetrievalIndex(
        faiss_index=index,
        ids=np.asarray(list(ids), dtype=object),
        labels=label_arrays,
        vectors=vectors,
        options=options,
    )


def _join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def _write_bytes(path: str, data: bytes) -> None:
    if "://" not in path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileSystems.create(path) as handle:
        handle.write(data)


def _read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def save_index(index: RetrievalIndex, directory: str, *, metadata: Mapping[str, Any] | None = None) -> dict:
    """Writes `index.faiss`, `ids.parquet` (row i = position i: id, labels, vector) and `index.json`.

    Args:
        index: the index to write.
        directory: local or `gs://` folder (created if local).
        metadata: extra entries for `index.json` (dims, source, timings, ...).

    Returns:
        The `index.json` content.
    """
    dim = index.vectors.shape[1]
    _write_bytes(_join(directory, INDEX_FILE), faiss.serialize_index(index.faiss_index).tobytes())
    table = pa.table(
        {
            "id": pa.array(index.ids.tolist(), pa.string()),
            "labels": pa.array([row.tolist() for row in index.labels], pa.list_(pa.int32())),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(index.vectors.reshape(-1)), dim),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    _write_bytes(_join(directory, IDS_FILE), sink.getvalue())
    content = {
        **dict(metadata or {}),
        "num_vectors": len(index),
        "dim": dim,
        "index": index.options.to_dict(),
        "files": {
            "index": INDEX_FILE,
            "ids": f"{IDS_FILE} (row i = index position i: id, labels, vector)",
        },
    }
    _write_bytes(_join(directory, METADATA_FILE), json.dumps(content, indent=2).encode())
    return content


def load_index(directory: str) -> RetrievalIndex:
    """Reads an index written by `pipelines.index` (or `save_index`).

    Raises:
        RetrievalInputError: the folder holds no index.
    """
    metadata_path = _join(directory, METADATA_FILE)
    if not FileSystems.exists(metadata_path):
        raise RetrievalInputError(
            f"no index at {directory} ({METADATA_FILE} missing); build one with "
            "`python -m pipelines.index --embeddings 'SCORES*.parquet' --output DIR`"
        )
    metadata = json.loads(_read_bytes(metadata_path))
    index = faiss.deserialize_index(np.frombuffer(_read_bytes(_join(directory, INDEX_FILE)), dtype=np.uint8))
    table = read_table(_join(directory, IDS_FILE))
    dim = int(metadata["dim"])
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    labels_column = table.column("labels").combine_chunks()
    lengths = pc.list_value_length(labels_column).fill_null(0).to_numpy()  # [N]
    flat_labels = labels_column.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
    labels = np.split(flat_labels, np.cumsum(lengths)[:-1]) if len(table) else []
    options = IndexOptions(**metadata["index"])
    if options.index_type != "flat":
        faiss.extract_index_ivf(index).nprobe = options.nprobe
    loaded = RetrievalIndex(
        faiss_index=index,
        ids=np.asarray(table.column("id").to_pylist(), dtype=object),
        labels=labels,
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        options=options,
        metadata=metadata,
    )
    if index.ntotal != len(loaded):
        raise RetrievalInputError(
            f"{directory}: {INDEX_FILE} holds {index.ntotal} vectors but {IDS_FILE} {len(loaded)} rows; "
            "rebuild the index"
        )
    return loaded


def index_transform(metadata: Mapping[str, Any], *, directory: str = "the index") -> str | None:
    """The name of the transform (a key of `TRANSFORMS`) that made an index's vectors, from `index.json`.

    Indexes written before `--transform` existed record only `"whiten": true | false`, which are the
    `whiten` and `pca` transforms. None for an index saved from Python without `pipelines.index` (its
    vectors are in whatever space the caller built them).

    Raises:
        RetrievalInputError: the index names a transform this version does not know.
    """
    if "transform" in metadata:
        transform = metadata["transform"]
        if transform not in TRANSFORMS:
            raise RetrievalInputError(
                f"{directory} was built with --transform {transform!r}, which this version does not know "
                f"(known: {', '.join(TRANSFORMS)}); rebuild it with pipelines.index or upgrade"
            )
        return transform
    if "whiten" in metadata:
        return "whiten" if metadata["whiten"] else "pca"
    return None


def search(index: RetrievalIndex | faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most similar indexed vectors (largest inner product) for each query.

    Args:
        index: a `RetrievalIndex` or a bare faiss index.
        queries: `[Q, d]` (or `[d]`) float vectors in the index's space (L2-normalised).
        k: neighbours per query.

    Returns:
        `(similarities [Q, k] float32, positions [Q, k] int64)`, best first; position -1 (similarity
        -inf) where the index returned fewer than k.
    """
    faiss_index = index.faiss_index if isinstance(index, RetrievalIndex) else index
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)  # [Q, d]
    if queries.shape[1] != faiss_index.d:
        raise RetrievalInputError(f"queries have dimension {queries.shape[1]}, the index {faiss_index.d}")
    if k < 1:
        raise RetrievalInputError(f"-k must be at least 1, got {k}")
    rerank = index.options.rerank if isinstance(index, RetrievalIndex) else 0
    if not rerank:
        return faiss_index.search(queries, k)
    _, candidates = faiss_index.search(queries, min(k * rerank, faiss_index.ntotal))  # [Q, k·rerank]
    similarities = np.full((len(queries), k), -np.inf, np.float32)
    positions = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(queries), _RERANK_CHUNK):  # bounds the [chunk, k·rerank, d] gather
        rows = slice(start, start + _RERANK_CHUNK)
        chunk = candidates[rows]
        exact = np.einsum("qcd,qd->qc", index.vectors[np.maximum(chunk, 0)], queries[rows])  # [q, k·rerank]
        exact[chunk < 0] = -np.inf
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        found = np.take_along_axis(chunk, best, axis=1)
        positions[rows, : best.shape[1]] = np.where(
            np.isfinite(np.take_along_axis(exact, best, 1)), found, -1
        )
        similarities[rows, : best.shape[1]] = np.take_along_axis(exact, best, axis=1)
    return similarities, positions


def _search_excluding(index: RetrievalIndex, queries: np.ndarray, k: int, exclude: np.ndarray):
    """Like `search`, dropping position `exclude[q]` from query q's results (the query itself)."""
    similarities, positions = search(index, queries, min(k + 1, len(index)))
    keep = (positions != exclude[:, None]) & (positions >= 0)  # [Q, k+1]
    # Rows where the query itself was not among the k+1 keep their first k.
    keep &= np.cumsum(keep, axis=1) <= k
    out_sim = np.full((len(queries), k), -np.inf, np.float32)
    out_pos = np.full((len(queries), k), -1, np.int64)
    for row in range(len(queries)):
        found = positions[row][keep[row]]
        out_pos[row, : len(found)] = found
        out_sim[row, : len(found)] = similarities[row][keep[row]]
    return out_sim, out_pos


def transform_embeddings(index_dir: str, embeddings: np.ndarray) -> np.ndarray:
    """Applies the index's saved tensorflow-transform function (its `--transform`, then L2) to embeddings.

    Args:
        index_dir: folder written by `pipelines.index` (holds `transform_fn/`).
        embeddings: `[Q, E]` (or `[E]`) model embeddings, as in the scored Parquet's `embedding`.

    Returns:
        `[Q, d]` float32 vectors, comparable with the indexed ones.
    """
    import tensorflow as tf

    tft = import_tensorflow_transform()
    embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))  # [Q, E]
    metadata = json.loads(_read_bytes(_join(index_dir, METADATA_FILE)))
    if "embedding_dim" not in metadata or not FileSystems.exists(_join(index_dir, TRANSFORM_DIR)):
        raise RetrievalInputError(
            f"the index at {index_dir} has no {TRANSFORM_DIR}/ (it was not built by pipelines.index); "
            "search it with vectors in its own space (--id, or search() from Python)"
        )
    transform = index_transform(metadata, directory=index_dir)
    logger.info("query embeddings → the index's %s transform (%s)", transform, TRANSFORMS[transform])
    expected = metadata["embedding_dim"]
    if embeddings.shape[1] != expected:
        raise RetrievalInputError(
            f"the query embedding has length {embeddings.shape[1]}, the index was built from length "
            f"{expected}; score the query with the same model"
        )
    output = tft.TFTransformOutput(index_dir)
    transformed = output.transform_raw_features({"embedding": tf.constant(embeddings)})
    return transformed["vector"].numpy().astype(np.float32)


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
    _, neighbours = _search_excluding(index, index.vectors[queries], k, exclude=queries)  # [Q, k]
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


def _format_labels(labels: np.ndarray, names: Mapping[int, str] | None) -> str:
    if names is None:
        return " ".join(str(label) for label in labels)
    return ", ".join(f"{names.get(int(label)) or '?'} ({label})" for label in labels)


def format_neighbours(
    index: RetrievalIndex,
    similarities: np.ndarray,
    positions: np.ndarray,
    *,
    query: str,
    query_labels: np.ndarray | None = None,
    label_names: Mapping[int, str] | None = None,
) -> str:
    """A plain-text table of one query's neighbours: rank, id, similarity, labels.

    Args:
        index: the index the positions refer to.
        similarities, positions: `[k]` results of one query (position -1 = no result).
        query: how to name the query in the heading (its id).
        query_labels: the query's labels, shown in the heading when given.
        label_names: `label_id -> name`; labels are shown as `name (id)` when given (`?` for blanks).

    Returns:
        The table, lines joined with newlines.
    """
    heading = f"query {query}"
    if query_labels is not None:
        heading += f"  labels: {_format_labels(query_labels, label_names) or '-'}"
    rows = [
        (str(rank), str(index.ids[pos]), f"{sim:.4f}", _format_labels(index.labels[pos], label_names) or "-")
        for rank, (sim, pos) in enumerate(zip(similarities, positions, strict=True), start=1)
        if pos >= 0
    ]
    header = ("rank", "id", "similarity", "labels")
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    aligned = (">", "<", ">", "<")

    def line(cells: Sequence[str]) -> str:
        parts = [
            f"{cell:{align}{width}}" for cell, align, width in zip(cells[:-1], aligned, widths, strict=False)
        ]
        return "  ".join([*parts, cells[-1]]).rstrip()

    return "\n".join([heading, line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def format_quality(quality: RetrievalQuality, *, index_dir: str, transform: str | None = None) -> str:
    """The evaluation as a small table (`transform`: the index's, see `index_transform`)."""
    rows = [
        ("index", index_dir),
        ("transform", transform or "- (vectors as saved)"),
        ("queries evaluated", str(quality.num_queries)),
        ("skipped (no labels / no relevant)", f"{quality.skipped_unlabeled} / {quality.skipped_no_relevant}"),
        (f"precision@{quality.k}", f"{quality.precision_at_k:.4f}"),
        (f"mAP@{quality.k}", f"{quality.map_at_k:.4f}"),
        (f"chance precision@{quality.k}", f"{quality.chance_precision:.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.search",
        description="Nearest neighbours and retrieval quality over an index built by pipelines.index.",
    )
    parser.add_argument("--index", required=True, help="folder written by pipelines.index (local or gs://)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--id", help="neighbours of this indexed video")
    query.add_argument(
        "--query_parquet", help="scored Parquet file holding a query video (use with --query_id)"
    )
    query.add_argument("--evaluate", action="store_true", help="label-overlap precision@k and mAP@k")
    parser.add_argument("--query_id", help="the video of --query_parquet to search with")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--label_names", help="CSV `label_id,label_name` to show label names")
    parser.add_argument("--nprobe", type=int, help="IVF cells visited per query (default: the index's)")
    parser.add_argument(
        "--rerank", type=int, help="ivfpq: candidates per neighbour re-scored (default: the index's)"
    )
    parser.add_argument(
        "--queries", type=int, default=1000, help="--evaluate: sampled queries (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="--evaluate: sampling seed")
    parser.add_argument("--output", help="--evaluate: JSON file (default INDEX/retrieval_quality.json)")
    args = parser.parse_args(argv)
    if args.query_parquet and not args.query_id:
        parser.error("--query_parquet needs --query_id (the video to search with)")
    if args.query_id and not args.query_parquet:
        parser.error(
            "--query_id needs --query_parquet (the scored file holding it); for an indexed video use --id"
        )
    if args.k < 1:
        parser.error(f"-k must be at least 1, got {args.k}")
    return args


def _run(args: argparse.Namespace) -> None:
    index = load_index(args.index)
    if args.nprobe is not None:
        index.set_nprobe(args.nprobe)
    if args.rerank is not None:
        index.set_rerank(args.rerank)
    names = read_label_names(args.label_names) if args.label_names else None
    if args.evaluate:
        transform = index_transform(index.metadata, directory=args.index)
        quality = evaluate_retrieval(index, k=args.k, num_queries=args.queries, seed=args.seed)
        output = args.output or _join(args.index, "retrieval_quality.json")
        report = {
            **quality.to_dict(),
            "index": args.index,
            "transform": transform,
            "seed": args.seed,
            "index_options": index.options.to_dict(),
        }
        _write_bytes(output, json.dumps(report, indent=2).encode())
        print(format_quality(quality, index_dir=args.index, transform=transform))
        print(f"wrote {output}")
        return
    if args.id is not None:
        position = index.position(args.id)
        vector = index.vectors[position : position + 1]
        query_labels = index.labels[position]
        query_name = args.id
    else:
        embedding = read_query_embedding(args.query_parquet, args.query_id)
        vector = transform_embeddings(args.index, embedding)
        query_labels = None
        query_name = f"{args.query_id} (from {args.query_parquet})"
    # The query itself is left out when it is indexed: "similar to X" should not list X.
    query_id = args.id if args.id is not None else args.query_id
    own = index.position(query_id) if query_id in index else -1
    similarities, positions = _search_excluding(index, vector, args.k, exclude=np.array([own]))
    print(
        format_neighbours(
            index,
            similarities[0],
            positions[0],
            query=query_name,
            query_labels=query_labels,
            label_names=names,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line message for bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _run(args)
    except (RetrievalInputError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
