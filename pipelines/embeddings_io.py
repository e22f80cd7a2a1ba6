"""The retrieval tools' files: scored Parquet embeddings in (for the index and search), index vectors out.

The input contract is docs/design.md's "Score output": one row per video with `id` (string), `labels`
(list<int32>) and `embedding` (a fixed-length list of float32: Arrow `fixed_size_list<float>[E]` or a
plain `list<float>` whose rows all have the same length). Paths may be local or `gs://`
(`nextvlad.files`; Beam's `FileSystems` for the latter). `ReadEmbeddings` and `WriteVectors` are the
Beam steps of `pipelines.index` on either side of its tensorflow-transform step.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from nextvlad.files import expand_pattern, open_binary, read_bytes

logger = logging.getLogger(__name__)

ID_COLUMN = "id"
LABELS_COLUMN = "labels"
EMBEDDING_COLUMN = "embedding"
MODEL_VERSION_COLUMN = "model_version"
REQUIRED_COLUMNS = (ID_COLUMN, LABELS_COLUMN, EMBEDDING_COLUMN)
VECTOR_COLUMN = "vector"  # the index vector (pipelines.index's output)
PROJECTED_COLUMN = "projected"  # --keep_projected: the coordinates before L2 normalisation
VECTORS_PREFIX = "vectors"  # OUTPUT/vectors-SSSSS-of-NNNNN.parquet


class RetrievalInputError(ValueError):
    """Input the retrieval tools cannot use (files, embeddings, options, ids); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class EmbeddingSource:
    """What the Parquet footers say about a set of scored files, read before any pipeline runs."""

    pattern: str  # the glob the user gave
    files: tuple[str, ...]  # matched files, sorted
    num_rows: int  # total rows over all files (from the footers)
    embedding_dim: int  # E: length of every embedding
    has_model_version: bool  # whether the files carry the `model_version` column


def import_tensorflow_transform() -> Any:
    """`tensorflow_transform`, imported so that the process keeps Keras 3 (and without tft's warning).

    Importing tft sets TF_USE_LEGACY_KERAS=1 when it is unset, which turns `tf.keras` into Keras 2 for the
    whole process and its children, so that Keras 3 `.keras` models no longer load (docs/design.md,
    "Known traps of this stack"). Setting it to 0 first is enough whenever TensorFlow was imported
    (TensorFlow reads the variable when `tf.keras` is first used); tft warns about that choice on
    import, and its own Keras layer uses the `tf_keras` package either way. Every retrieval module
    imports tft through this function, and only when it is needed, so they can be imported in any order.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")
    if os.environ["TF_USE_LEGACY_KERAS"].lower() in ("1", "true"):
        logger.warning(
            "TF_USE_LEGACY_KERAS=%s in this process's environment: tf.keras is Keras 2 here and Keras 3 "
            ".keras models will not load; unset the variable",
            os.environ["TF_USE_LEGACY_KERAS"],
        )
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        import tensorflow_transform
    finally:
        absl_logger.setLevel(level)
    return tensorflow_transform


def match_files(pattern: str) -> list[str]:
    """Sorted paths matching a local or `gs://` glob.

    Raises:
        RetrievalInputError: when nothing matches.
    """
    try:
        return expand_pattern(pattern)
    except FileNotFoundError:
        raise RetrievalInputError(
            f"no Parquet files match {pattern!r}; check the path and quote the glob so the shell does not "
            "expand it (e.g. --embeddings 'scores/run1-*.parquet')"
        ) from None
    except BeamIOError as error:  # a remote folder that does not exist
        raise RetrievalInputError(
            f"no Parquet files match {pattern!r} ({error.__class__.__name__}); check the path and quote "
            "the glob so the shell does not expand it"
        ) from None


def _open_parquet(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(open_binary(path))
    except (pa.ArrowInvalid, OSError) as error:
        raise RetrievalInputError(f"{path} is not a readable Parquet file: {error}") from None


def _float_list_length(field: pa.Field, path: str) -> int | None:
    """E for `fixed_size_list<float>[E]`, None for a variable `list<float>`; errors otherwise."""
    kind = field.type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not is_list or not pa.types.is_floating(kind.value_type):
        raise RetrievalInputError(
            f"column {field.name!r} of {path} has type {kind}; expected a list of floats "
            "(the scoring pipeline's `embedding` column)"
        )
    return kind.list_size if pa.types.is_fixed_size_list(kind) else None


def inspect_embeddings(pattern: str) -> EmbeddingSource:
    """Matches `pattern` and checks the files' schemas, row counts and embedding length.

    Only the footers are read, plus the first embedding of the first non-empty file when the column
    is a variable-length list (rows are then checked one by one while the pipeline reads them).

    Args:
        pattern: local or `gs://` glob of scored Parquet files.

    Returns:
        The files, the total row count and the embedding length E.

    Raises:
        RetrievalInputError: no file matches, a required column is missing or of the wrong type, the
            files disagree on E, or there are no rows.
    """
    files = match_files(pattern)
    num_rows = 0
    fixed_dims: dict[str, int] = {}
    first_variable: str | None = None
    has_model_version = True
    for path in files:
        parquet = _open_parquet(path)
        schema = parquet.schema_arrow
        missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
        if missing:
            raise RetrievalInputError(
                f"{path} lacks column(s) {missing} (has {schema.names}); expected the scoring pipeline's "
                f"output with columns {list(REQUIRED_COLUMNS)}"
            )
        has_model_version &= MODEL_VERSION_COLUMN in schema.names
        size = _float_list_length(schema.field(EMBEDDING_COLUMN), path)
        rows = parquet.metadata.num_rows
        num_rows += rows
        if size is not None:
            fixed_dims[path] = size
        elif first_variable is None and rows > 0:
            first_variable = path
    if num_rows == 0:
        raise RetrievalInputError(f"the {len(files)} file(s) matching {pattern!r} hold no rows")
    dims = set(fixed_dims.values())
    if first_variable is not None:
        first = _open_parquet(first_variable).read_row_group(0, columns=[EMBEDDING_COLUMN])
        lengths = pc.list_value_length(first.column(EMBEDDING_COLUMN)).to_numpy(zero_copy_only=False)
        dims.add(int(lengths[0]))
    if len(dims) > 1:
        detail = ", ".join(f"{path}: {dim}" for path, dim in sorted(fixed_dims.items()))
        raise RetrievalInputError(
            f"embedding length differs between the files matching {pattern!r} ({detail}); index one "
            "model's embeddings at a time"
        )
    return EmbeddingSource(
        pattern=pattern,
        files=tuple(files),
        num_rows=num_rows,
        embedding_dim=dims.pop(),
        has_model_version=has_model_version,
    )


def embedding_matrix(
    column: pa.Array | pa.ChunkedArray, *, dim: int, ids: Sequence[str] | pa.Array, source: str
) -> np.ndarray:
    """The embeddings of a column as a float32 matrix `[N, dim]`, checking every row's length.

    Args:
        column: the `embedding` column (fixed-size or variable list of floats).
        dim: the expected length E.
        ids: the rows' video ids, to name the offending row in an error.
        source: where the rows come from (file name), for the error message.

    Returns:
        float32 array `[N, dim]`.

    Raises:
        RetrievalInputError: a row is null or its length is not `dim`.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)  # [N], NaN-free ints or None
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~valid | (np.nan_to_num(lengths.astype(float), nan=-1) != dim))
    if bad.size:
        row = int(bad[0])
        got = "null" if not valid[row] else f"length {int(lengths[row])}"
        video_id = ids[row].as_py() if isinstance(ids, pa.Array) else ids[row]
        raise RetrievalInputError(
            f"embedding length differs between rows: video {video_id!r} in {source} has {got}, expected "
            f"{dim} ({bad.size} bad row(s) in this batch); every row must come from the same model"
        )
    values = column.flatten()  # honours slice offsets for both list kinds; no nulls are left
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(column), dim)


def read_table(path: str, *, columns: Sequence[str] | None = None) -> pa.Table:
    """Reads one Parquet file (local or `gs://`)."""
    return pq.read_table(io.BytesIO(read_bytes(path)), columns=list(columns) if columns else None)


def read_tables(pattern: str, *, columns: Sequence[str] | None = None) -> pa.Table:
    """Reads and concatenates every file matching `pattern`, in sorted file order."""
    tables = [read_table(path, columns=columns) for path in match_files(pattern)]
    return pa.concat_tables(tables, promote_options="permissive")


def read_query_embedding(path: str, video_id: str) -> np.ndarray:
    """The embedding `[E]` of video `video_id` from one scored Parquet file.

    Raises:
        RetrievalInputError: the file is missing or has no row with that id.
    """
    files = match_files(path)
    for file in files:
        table = read_table(file, columns=[ID_COLUMN, EMBEDDING_COLUMN])
        rows = table.filter(pc.equal(table.column(ID_COLUMN), video_id))
        if rows.num_rows:
            column = rows.column(EMBEDDING_COLUMN).combine_chunks()
            dim = int(pc.list_value_length(column)[0].as_py())
            return embedding_matrix(column, dim=dim, ids=[video_id], source=file)[0]
    raise RetrievalInputError(
        f"unknown query id {video_id!r}: not in {path}; pass an id from that file's `id` column"
    )


# tft passes "passthrough" columns around the transform only when each row holds a one-element list,
# so the id, labels and model version travel wrapped in one and are unwrapped before writing.
PASSTHROUGH_KEYS = (ID_COLUMN, LABELS_COLUMN, MODEL_VERSION_COLUMN)


def _input_schema() -> pa.Schema:
    return pa.schema(
        [
            (ID_COLUMN, pa.list_(pa.string())),
            (LABELS_COLUMN, pa.list_(pa.list_(pa.int32()))),
            (MODEL_VERSION_COLUMN, pa.list_(pa.string())),
            (EMBEDDING_COLUMN, pa.list_(pa.float32())),
        ]
    )


def tensor_adapter_config(embedding_dim: int) -> Any:
    """How tft reads the record batches of `ReadEmbeddings`: `embedding` as a dense `[E]` float tensor."""
    # Imported here: tfx_bsl loads TensorFlow, which only the tft job needs.
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.tfxio import tensor_adapter

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
