"""The nearest-neighbour index of the retrieval tools: faiss build, persistence and re-ranked search.

An index holds L2-normalised vectors (so the inner product is the cosine), each position's video id and
labels, and the options it was built with. `pipelines.index` builds one from scored embeddings and
`pipelines.search` answers queries against it; from Python:

    index = build_index(vectors, ids=ids, labels=labels, index_type="ivf")
    save_index(index, "runs/index")
    similarities, positions = search(load_index("runs/index"), queries, k=10)
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from nextvlad.files import read_bytes, write_bytes
from pipelines.embeddings_io import RetrievalInputError, read_table

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "ivf", "ivfpq")
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
METADATA_FILE = "index.json"
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
    write_bytes(FileSystems.join(directory, INDEX_FILE), faiss.serialize_index(index.faiss_index).tobytes())
    table = pa.table(
        {
            "id": pa.array(index.ids.tolist(), pa.string()),
            "labels": pa.array([row.tolist() for row in index.labels], pa.list_(pa.int32())),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(index.vectors.reshape(-1)), dim),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_bytes(FileSystems.join(directory, IDS_FILE), sink.getvalue())
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
    write_bytes(FileSystems.join(directory, METADATA_FILE), json.dumps(content, indent=2).encode())
    return content


def load_index(directory: str) -> RetrievalIndex:
    """Reads an index written by `pipelines.index` (or `save_index`).

    Raises:
        RetrievalInputError: the folder holds no index.
    """
    metadata_path = FileSystems.join(directory, METADATA_FILE)
    if not FileSystems.exists(metadata_path):
        raise RetrievalInputError(
            f"no index at {directory} ({METADATA_FILE} missing); build one with "
            "`python -m pipelines.index --embeddings 'SCORES*.parquet' --output DIR`"
        )
    metadata = json.loads(read_bytes(metadata_path))
    serialized = read_bytes(FileSystems.join(directory, INDEX_FILE))
    index = faiss.deserialize_index(np.frombuffer(serialized, dtype=np.uint8))
    table = read_table(FileSystems.join(directory, IDS_FILE))
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


def search_excluding(
    index: RetrievalIndex, queries: np.ndarray, k: int, *, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
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
