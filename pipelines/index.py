"""Retrieval index over pooled embeddings: a corpus-level transform learned with tensorflow-transform + faiss.

    python -m pipelines.index --embeddings 'runs/scores/run1-*.parquet' --output runs/index \\
        [--transform raw|pca|pca_power|whiten] [--dim 256] [--index_type flat|ivf|ivfpq] [--nlist N] \\
        [--nprobe N] [--pq_m M] [--rerank R] [--runner DirectRunner | DataflowRunner ...]

A Beam + tensorflow-transform job learns over the whole corpus whatever `--transform` needs — the mean
μ, the top-`dim` principal directions V (`tft.pca`) and the variance λ_j of the data along each
(`tft.var` of the projections; λ_j are the covariance's eigenvalues) — then maps every embedding x to
an L2-normalised vector, so that the inner product of two vectors is their cosine in that space:

    raw        v = normalize(x)                                  (no projection: dim = E)
    pca        v = normalize(p),               p = Vᵀ(x − μ)
    pca_power  v = normalize(sign(p) ⊙ √|p|)                     (power normalisation, α = ½)
    whiten     v = normalize(diag(λ + ε·max λ)^(-1/2) · p)       (Jégou & Chum, ECCV 2012)

The default (`DEFAULT_TRANSFORM`) is the one with the best label-overlap precision@10 on the model
embeddings in BENCHMARKS.md ("Retrieval index"); the others stay available. Written to `--output`:

- `transform_fn/`, `transformed_metadata/`: the learned function (`tft.TFTransformOutput(OUTPUT)`),
  which `pipelines.search` applies to query videos that are not in the index;
- `vectors-SSSSS-of-NNNNN.parquet`: `id`, `labels`, `model_version`, `vector` (fixed_size_list<float>[dim]);
- `index.faiss` + `ids.parquet` (row i = index position i) + `index.json` (dims, counts, transform,
  options, source files, model versions, timings). The faiss index is built on the launching machine
  from the written vectors (N × dim float32 must fit in its memory: 1M × 256 is 1 GB, 1M × 2048 raw
  vectors 8 GB).

Index types: `flat` (default, exact inner product), `ivf` (inverted lists; `--nprobe` of `--nlist`
cells are searched) and `ivfpq` (IVF with product-quantised codes, `--pq_m` bytes per vector, whose
best `--rerank`·k candidates are re-scored exactly). BENCHMARKS.md has speed and recall at one
million vectors. Search with `python -m pipelines.search --index OUTPUT --id VIDEO_ID`.

Any Beam option is passed through (`--runner`, `--temp_location`, ...); `deploy/index_dataflow.sh`
runs this on Dataflow.
"""

from __future__ import annotations

import os

# tensorflow_transform sets TF_USE_LEGACY_KERAS=1 on import when it is unset, which turns tf.keras into
# Keras 2 for the whole process (and its children) and breaks Keras 3 model loading (docs/design.md,
# "Known traps of this stack"). It
# must be decided before TensorFlow is first imported; tft's own Keras layer uses the tf_keras package
# either way.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import tensorflow as tf  # noqa: E402
from apache_beam.io.filesystem import BeamIOError  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402
from tensorflow_metadata.proto.v0 import schema_pb2  # noqa: E402
from tfx_bsl.tfxio import tensor_adapter  # noqa: E402

from pipelines.embeddings_io import (  # noqa: E402
    EMBEDDING_COLUMN,
    ID_COLUMN,
    LABELS_COLUMN,
    MODEL_VERSION_COLUMN,
    EmbeddingSource,
    RetrievalInputError,
    embedding_matrix,
    import_tensorflow_transform,
    inspect_embeddings,
    read_tables,
)
from pipelines.search import (  # noqa: E402
    INDEX_TYPES,
    TRANSFORM_DIR,
    TRANSFORMS,
    build_index,
    resolve_index_options,
    save_index,
)

tft = import_tensorflow_transform()
import tensorflow_transform.beam as tft_beam  # noqa: E402

logger = logging.getLogger(__name__)

if os.environ["TF_USE_LEGACY_KERAS"].lower() in ("1", "true"):
    logger.warning(
        "TF_USE_LEGACY_KERAS=%s in this process (set by the environment, or by an earlier import of "
        "tensorflow_transform): tf.keras is Keras 2 here and Keras 3 .keras models will not load; "
        "import pipelines.index first or unset the variable",
        os.environ["TF_USE_LEGACY_KERAS"],
    )

__all__ = [
    "DEFAULT_TRANSFORM",
    "IndexConfig",
    "build_index",
    "index_embeddings",
    "make_preprocessing_fn",
    "run",
]

DEFAULT_DIM = 256
# The measured default: see BENCHMARKS.md, "Retrieval index".
DEFAULT_TRANSFORM = "whiten"
_DEFAULT_TRANSFORM_WHY = "PCA-whitening, Jégou & Chum 2012"
VECTOR_COLUMN = "vector"
PROJECTED_COLUMN = "projected"
VECTORS_PREFIX = "vectors"


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Everything `pipelines.index` needs besides the Beam options."""

    embeddings: str  # glob of scored Parquet files (local or gs://)
    output: str  # folder for transform_fn/, vectors-*.parquet, index.faiss, ids.parquet, index.json
    dim: int | None = None  # PCA output size; None: min(256, E, rows − 1); raw: always E
    transform: str = DEFAULT_TRANSFORM  # raw | pca | pca_power | whiten (pipelines.search.TRANSFORMS)
    whiten_epsilon: float = 1e-6  # whiten: added to each variance, relative to the largest (caps the gain)
    index_type: str = "flat"  # flat | ivf | ivfpq (see pipelines.search.IndexOptions)
    nlist: int | None = None  # IVF cells; None: ≈ 4·√N
    nprobe: int | None = None  # IVF cells searched per query; None: max(nlist/64, min(nlist, 32))
    pq_m: int | None = None  # ivfpq bytes per vector; None: dim / 4
    rerank: int | None = None  # ivfpq candidates per neighbour re-scored exactly; None: 10
    keep_projected: bool = False  # also write the PCA coordinates before L2 (`projected` column)
    num_shards: int = 0  # vectors-*.parquet shards; 0 lets the runner decide


def pca_projection(x: tf.Tensor, *, dim: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """tft analyzers for a corpus PCA: the mean μ [E], the top-`dim` principal directions V [E, dim]
    (decreasing variance) and the projections `(x − μ) V` [B, dim] of float64 `x` [B, E]."""
    mean = tft.mean(x, reduce_instance_dims=False, name="embedding_mean")  # [E]
    components = tft.pca(x, output_dim=dim, dtype=tf.float64, name="pca")  # [E, dim]
    return mean, components, tf.matmul(x - mean, components)


def make_preprocessing_fn(
    *, dim: int, transform: str = DEFAULT_TRANSFORM, epsilon: float = 1e-6, keep_projected: bool = False
) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
    """The tensorflow-transform `preprocessing_fn`: one of `TRANSFORMS`, then L2 normalisation.

    Args:
        dim: number of principal components kept (ignored by `raw`, whose vectors keep all E values).
        transform: `raw` (L2 only), `pca` (centre, project on the top `dim` principal directions),
            `pca_power` (`pca`, then the signed square root of each coordinate) or `whiten` (`pca`,
            then each component divided by √(λ_j + ε·max λ), λ_j its variance over the corpus).
        epsilon: the whitening regulariser ε, relative to the largest variance.
        keep_projected: also output `projected`, the coordinates just before L2 normalisation.

    Returns:
        A pure function from `{"embedding": [B, E] float32}` to `{"vector": [B, dim] float32}` (plus
        `projected` when asked).
    """
    if transform not in TRANSFORMS:
        raise RetrievalInputError(f"--transform {transform!r} is not one of {list(TRANSFORMS)}")

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # float64 throughout: the covariance is accumulated as E[xxᵀ] − μμᵀ, which loses digits when
        # the mean is large compared with the spread.
        x = tf.cast(inputs[EMBEDDING_COLUMN], tf.float64)  # [B, E]
        if transform == "raw":
            projected = x  # [B, E]
        else:
            _, _, projected = pca_projection(x, dim=dim)  # [B, dim]
        if transform == "whiten":
            # The variance along an eigenvector is its eigenvalue; tft.pca does not return those, so a
            # second pass measures them on the projections.
            variance = tft.var(projected, reduce_instance_dims=False, name="pca_variance")  # [dim]
            projected = projected / tf.sqrt(variance + epsilon * tf.reduce_max(variance))  # [B, dim]
        elif transform == "pca_power":
            # Power normalisation (α = ½) shrinks the dominant components' share of the cosine without
            # equalising them: a softer whitening that needs no variance estimate. Scale-free under L2.
            projected = tf.sign(projected) * tf.sqrt(tf.abs(projected))  # [B, dim]
        outputs = {VECTOR_COLUMN: tf.cast(tf.math.l2_normalize(projected, axis=1), tf.float32)}
        if keep_projected:
            outputs[PROJECTED_COLUMN] = tf.cast(projected, tf.float32)
        return outputs

    return preprocessing_fn


# tft passes "passthrough" columns around the transform only when each row holds a one-element list,
# so the id, labels and model version travel wrapped in one and are unwrapped before writing.
_PASSTHROUGH_KEYS = (ID_COLUMN, LABELS_COLUMN, MODEL_VERSION_COLUMN)


def _input_schema() -> pa.Schema:
    return pa.schema(
        [
            (ID_COLUMN, pa.list_(pa.string())),
            (LABELS_COLUMN, pa.list_(pa.list_(pa.int32()))),
            (MODEL_VERSION_COLUMN, pa.list_(pa.string())),
            (EMBEDDING_COLUMN, pa.list_(pa.float32())),
        ]
    )


def _tensor_adapter_config(embedding_dim: int) -> tensor_adapter.TensorAdapterConfig:
    dense = schema_pb2.TensorRepresentation.DenseTensor(
        column_name=EMBEDDING_COLUMN,
        shape=schema_pb2.FixedShape(dim=[schema_pb2.FixedShape.Dim(size=embedding_dim)]),
    )
    return tensor_adapter.TensorAdapterConfig(
        _input_schema(), {EMBEDDING_COLUMN: schema_pb2.TensorRepresentation(dense_tensor=dense)}
    )


def _wrap(values: pa.Array) -> pa.ListArray:
    """Each value in a one-element list."""
    return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32)), values)


def _to_record_batch(element: tuple[str, pa.Table], embedding_dim: int) -> pa.RecordBatch:
    """One Parquet row group → the record batch the transform reads; checks every embedding's length."""
    filename, table = element
    ids = table.column(ID_COLUMN).combine_chunks().cast(pa.string())
    embeddings = embedding_matrix(
        table.column(EMBEDDING_COLUMN), dim=embedding_dim, ids=ids, source=filename
    )  # [B, E]
    labels = table.column(LABELS_COLUMN).combine_chunks().cast(pa.list_(pa.int32()))
    if labels.null_count:
        labels = pa.array([row or [] for row in labels.to_pylist()], pa.list_(pa.int32()))
    if MODEL_VERSION_COLUMN in table.column_names:
        versions = table.column(MODEL_VERSION_COLUMN).combine_chunks().cast(pa.string())
    else:
        versions = pa.nulls(len(table), pa.string())
    offsets = pa.array(np.arange(len(table) + 1, dtype=np.int32) * embedding_dim)
    beam.metrics.Metrics.counter("index", "rows_read").inc(len(table))
    return pa.RecordBatch.from_arrays(
        [
            _wrap(ids),
            _wrap(labels),
            _wrap(versions),
            pa.ListArray.from_arrays(offsets, pa.array(embeddings.ravel())),
        ],
        schema=_input_schema(),
    )


class ReadEmbeddings(beam.PTransform):
    """Scored Parquet files → record batches (`id`, `labels`, `model_version` wrapped; `embedding` [E])."""

    def __init__(self, source: EmbeddingSource) -> None:
        super().__init__()
        self._source = source

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        columns = [ID_COLUMN, LABELS_COLUMN, EMBEDDING_COLUMN]
        if self._source.has_model_version:
            columns.append(MODEL_VERSION_COLUMN)
        return (
            pbegin
            | "FilePattern" >> beam.Create([self._source.pattern])
            | "ReadParquet" >> beam.io.ReadAllFromParquetBatched(columns=columns, with_filename=True)
            | "ToRecordBatch" >> beam.Map(_to_record_batch, embedding_dim=self._source.embedding_dim)
        )


def _output_schema(dim: int, keep_projected: bool) -> pa.Schema:
    fields = [
        (ID_COLUMN, pa.string()),
        (LABELS_COLUMN, pa.list_(pa.int32())),
        (MODEL_VERSION_COLUMN, pa.string()),
        (VECTOR_COLUMN, pa.list_(pa.float32(), dim)),
    ]
    if keep_projected:
        fields.append((PROJECTED_COLUMN, pa.list_(pa.float32(), dim)))
    return pa.schema(fields)


def _to_output_table(element: tuple[pa.RecordBatch, Any], schema: pa.Schema) -> pa.Table:
    """A transformed record batch (passthrough columns still wrapped) → a table of `schema`."""
    batch, _ = element
    columns = []
    for field in schema:
        column = batch.column(batch.schema.get_field_index(field.name))
        flat = column.flatten()
        if pa.types.is_fixed_size_list(field.type):
            flat = pa.FixedSizeListArray.from_arrays(flat.cast(pa.float32()), field.type.list_size)
        columns.append(flat.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class WriteVectors(beam.PTransform):
    """Transformed record batches → `OUTPUT/vectors-SSSSS-of-NNNNN.parquet`."""

    def __init__(self, output: str, *, dim: int, keep_projected: bool, num_shards: int) -> None:
        super().__init__()
        self._output = output
        self._schema = _output_schema(dim, keep_projected)
        self._num_shards = num_shards

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return (
            batches
            | "ToTable" >> beam.Map(_to_output_table, schema=self._schema)
            | "WriteParquet"
            >> beam.io.WriteToParquetBatched(
                FileSystems.join(self._output, VECTORS_PREFIX),
                schema=self._schema,
                file_name_suffix=".parquet",
                num_shards=self._num_shards,
            )
        )


def _resolve_dim(config: IndexConfig, source: EmbeddingSource) -> int:
    if config.transform == "raw":
        if config.dim is not None and config.dim != source.embedding_dim:
            logger.warning(
                "--dim %d is ignored with --transform raw: its vectors keep all %d values of the embedding",
                config.dim,
                source.embedding_dim,
            )
        return source.embedding_dim
    limit = source.num_rows - 1  # centred data of N rows spans at most N − 1 directions
    if config.dim is None:
        dim = min(DEFAULT_DIM, source.embedding_dim, limit)
        if dim < 1:
            raise RetrievalInputError(
                f"{source.pattern} holds {source.num_rows} row(s); an index needs at least 2"
            )
        return dim
    if config.dim < 1:
        raise RetrievalInputError(f"--dim must be at least 1, got {config.dim}")
    if config.dim > source.embedding_dim:
        raise RetrievalInputError(
            f"--dim {config.dim} is larger than the embedding length {source.embedding_dim} of "
            f"{source.pattern}; pass --dim {source.embedding_dim} or less"
        )
    if config.dim > limit:
        raise RetrievalInputError(
            f"--dim {config.dim} is larger than the number of rows allows: {source.num_rows} rows of "
            f"{source.pattern} span at most {limit} directions once centred; pass --dim {max(limit, 1)} or "
            "less, or index more videos"
        )
    return config.dim


def _input_error_in(error: BaseException) -> RetrievalInputError | None:
    """Our input error inside whatever the runner raised, without Beam's step annotations."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if isinstance(error, RetrievalInputError) or "RetrievalInputError" in text:
            message = text.split("RetrievalInputError: ", 1)[-1]
            message = re.sub(r" \[while running '[^']*'\]", "", message).strip().splitlines()[0]
            return RetrievalInputError(message)
        error = error.__cause__ or error.__context__
    return None


class _DropCacheKeyWarning(logging.Filter):
    """tft warns that a second-phase analyzer's cache key "varies on repeated tracing" and that this is
    safe when every analyzer is named, as ours are; the warning would only alarm users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "cache key varies on repeated tracing" not in record.getMessage()


def _delete_folder(path: str) -> None:
    """Removes tft's temporary folder (on GCS, everything under `path/`)."""
    if "://" not in path:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        FileSystems.delete([path.rstrip("/") + "/"])
    except BeamIOError as error:  # nothing there
        logger.debug("no temporary folder to remove at %s: %s", path, error)


def _delete_matching(pattern: str) -> None:
    stale = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if stale:
        logger.warning("replacing %d file(s) matching %s", len(stale), pattern)
        FileSystems.delete(stale)


def index_embeddings(
    config: IndexConfig,
    *,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any]:
    """Runs the whole job: checks the input, runs the tft pipeline, builds and writes the faiss index.

    Args:
        config: input, output and index settings.
        options: Beam pipeline options (runner etc.); DirectRunner when None.
        test_pipeline: a pipeline to build on instead of a new one (it is run here).

    Returns:
        The content of `OUTPUT/index.json`.

    Raises:
        RetrievalInputError: unusable input or options (checked before any work is submitted where the
            footers suffice; rows whose embedding length differs fail the pipeline with this error).
    """
    start = time.perf_counter()
    if config.transform not in TRANSFORMS:
        raise RetrievalInputError(f"--transform {config.transform!r} is not one of {list(TRANSFORMS)}")
    source = inspect_embeddings(config.embeddings)
    dim = _resolve_dim(config, source)
    # Fail on impossible index options now rather than after the pipeline has run.
    resolve_index_options(
        source.num_rows,
        dim,
        index_type=config.index_type,
        nlist=config.nlist,
        nprobe=config.nprobe,
        pq_m=config.pq_m,
        rerank=config.rerank,
    )
    logger.info(
        "indexing %d rows of %d-d embeddings from %d file(s) → %d-d, transform %s",
        source.num_rows,
        source.embedding_dim,
        len(source.files),
        dim,
        config.transform,
    )
    vectors_pattern = FileSystems.join(config.output, f"{VECTORS_PREFIX}-*.parquet")
    _delete_matching(vectors_pattern)
    temp_dir = FileSystems.join(config.output, "tmp")
    options = options or PipelineOptions()
    preprocessing_fn = make_preprocessing_fn(
        dim=dim,
        transform=config.transform,
        epsilon=config.whiten_epsilon,
        keep_projected=config.keep_projected,
    )
    pipeline = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    cache_key_filter = _DropCacheKeyWarning()
    logging.getLogger("absl").addFilter(cache_key_filter)
    try:
        with pipeline as p, tft_beam.Context(temp_dir=temp_dir, passthrough_keys=set(_PASSTHROUGH_KEYS)):
            batches = p | "ReadEmbeddings" >> ReadEmbeddings(source)
            (transformed, _), transform_fn = (
                batches,
                _tensor_adapter_config(source.embedding_dim),
            ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                preprocessing_fn, output_record_batches=True
            )
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(config.output)
            _ = transformed | "WriteVectors" >> WriteVectors(
                config.output, dim=dim, keep_projected=config.keep_projected, num_shards=config.num_shards
            )
    except Exception as error:
        input_error = _input_error_in(error)
        if input_error is None:
            raise
        raise input_error from None
    finally:
        logging.getLogger("absl").removeFilter(cache_key_filter)
    _delete_folder(temp_dir)
    transform_seconds = time.perf_counter() - start

    index_start = time.perf_counter()
    table = read_tables(vectors_pattern)
    vectors = table.column(VECTOR_COLUMN).combine_chunks().flatten().to_numpy().reshape(-1, dim)  # [N, dim]
    if len(table) != source.num_rows:
        logger.warning("read %d rows but wrote %d vectors", source.num_rows, len(table))
    index = build_index(
        vectors,
        ids=table.column(ID_COLUMN).to_pylist(),
        labels=table.column(LABELS_COLUMN).to_pylist(),
        index_type=config.index_type,
        nlist=config.nlist,
        nprobe=config.nprobe,
        pq_m=config.pq_m,
        rerank=config.rerank,
    )
    index_seconds = time.perf_counter() - index_start
    versions = sorted({v for v in table.column(MODEL_VERSION_COLUMN).to_pylist() if v is not None})
    metadata = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": {"embeddings": source.pattern, "files": list(source.files), "num_rows": source.num_rows},
        "model_versions": versions,
        "embedding_dim": source.embedding_dim,
        "transform": config.transform,
        "transform_definition": TRANSFORMS[config.transform],
        # Kept for readers of indexes from before --transform (true only for the whiten transform).
        "whiten": config.transform == "whiten",
        "whiten_epsilon": config.whiten_epsilon,
        "transform_fn": f"{TRANSFORM_DIR}/ (tft.TFTransformOutput(this folder): `embedding` → `vector`)",
        "vectors": f"{VECTORS_PREFIX}-*.parquet",
        "runner": str(options.view_as(StandardOptions).runner or "DirectRunner"),
        "timings_s": {
            "transform": round(transform_seconds, 3),
            "index": round(index_seconds, 3),
            "total": round(time.perf_counter() - start, 3),
        },
    }
    return save_index(index, config.output, metadata=metadata)


def parse_known_args(argv: Sequence[str] | None = None) -> tuple[IndexConfig, list[str]]:
    """This job's flags → `IndexConfig`; everything else is returned for Beam's `PipelineOptions`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.index",
        description="Map scored embeddings to index vectors with tensorflow-transform (--transform); "
        "build a nearest-neighbour index",
        epilog="transforms (--transform):\n"
        + "\n".join(f"  {name:<10} {definition}" for name, definition in TRANSFORMS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--embeddings", required=True, help="glob of scored Parquet files (quote it)")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    parser.add_argument(
        "--transform",
        choices=tuple(TRANSFORMS),
        help=f"embedding → vector map, defined below (default {DEFAULT_TRANSFORM}: {_DEFAULT_TRANSFORM_WHY})",
    )
    parser.add_argument(
        "--dim",
        type=int,
        help=f"PCA output size (default {DEFAULT_DIM}, capped by E and rows − 1; raw: always E)",
    )
    parser.add_argument(
        "--whiten",
        action=argparse.BooleanOptionalAction,
        help="deprecated: --whiten is --transform whiten, --no-whiten is --transform pca",
    )
    parser.add_argument(
        "--whiten_epsilon",
        type=float,
        default=1e-6,
        help="whiten: variance regulariser, relative to the largest (1e-6)",
    )
    parser.add_argument(
        "--index_type", choices=INDEX_TYPES, default="flat", help="flat (exact, default), ivf, ivfpq"
    )
    parser.add_argument("--nlist", type=int, help="IVF cells (default ≈ 4·√N)")
    parser.add_argument(
        "--nprobe", type=int, help="IVF cells searched per query (default max(nlist/64, min(nlist, 32)))"
    )
    parser.add_argument("--pq_m", type=int, help="ivfpq bytes per vector; divides --dim (default dim/4)")
    parser.add_argument("--rerank", type=int, help="ivfpq candidates per neighbour re-scored exactly (10)")
    parser.add_argument(
        "--keep_projected", action="store_true", help="also write the PCA coordinates before L2 (`projected`)"
    )
    parser.add_argument(
        "--num_shards", type=int, default=0, help="vectors-*.parquet shards (0: runner decides)"
    )
    args, beam_args = parser.parse_known_args(argv)
    if args.whiten is not None:
        implied = "whiten" if args.whiten else "pca"
        flag = "--whiten" if args.whiten else "--no-whiten"
        if args.transform not in (None, implied):
            parser.error(f"{flag} (= --transform {implied}) contradicts --transform {args.transform}")
        logger.warning("%s is deprecated: pass --transform %s", flag, implied)
        args.transform = implied
    if args.transform is None:
        args.transform = DEFAULT_TRANSFORM
    config = IndexConfig(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(IndexConfig)}
    )
    return config, beam_args


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Parses `argv` (this job's flags and Beam's) and runs `index_embeddings`; returns `index.json`."""
    config, beam_args = parse_known_args(argv)
    return index_embeddings(config, options=PipelineOptions(beam_args), test_pipeline=test_pipeline)


class _DropInputErrorTracebacks(logging.Filter):
    """Beam logs a DoFn's exception with its traceback before re-raising it; for bad input the CLI's
    one-line message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _input_error_in(record.exc_info[1]) is not None)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line message for bad input)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipelines").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropInputErrorTracebacks())
    config, beam_args = parse_known_args(argv)
    try:
        metadata = index_embeddings(config, options=PipelineOptions(beam_args))
    except RetrievalInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = metadata["index"]
    knobs = "".join(
        f", {key} {options[key]}" for key in ("nlist", "nprobe", "pq_m", "rerank") if options[key]
    )
    print(
        f"indexed {metadata['num_vectors']} videos: {metadata['embedding_dim']}-d embeddings → "
        f"{metadata['dim']}-d vectors ({metadata['transform']}), "
        f"{options['index_type']} index{knobs}, in {metadata['timings_s']['total']:.1f} s → {config.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
