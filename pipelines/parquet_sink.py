"""Parquet output of the scoring pipeline: `{output}-SSSSS-of-NNNNN.parquet` with an explicit schema.

The schema is the "Score output" contract of docs/design.md; the embedding is a fixed-size list so
that readers know its length without looking at the data (DuckDB sees `FLOAT[E]`, pandas a numpy
array per row):

| column | type |
| --- | --- |
| `id` | string |
| `num_frames` | int32 (0 for video-level input) |
| `labels` | list<int32> |
| `top_classes` | list<int32> |
| `top_scores` | list<float32> |
| `embedding` | fixed_size_list<float32>[E] |
| `model_version` | string |

With segment scoring (`pipelines.score --segments`) the segment rows go to
`{output}_segments-SSSSS-of-NNNNN.parquet`, a name the video rows' glob `{output}-*.parquet` never matches:

| column | type |
| --- | --- |
| `id` | string (the video) |
| `start_time` | int32 (the segment's first frame = second) |
| `top_classes` | list<int32> |
| `top_scores` | list<float32> |
| `embedding` | fixed_size_list<float32>[E] (only with `--segment_embeddings`) |

Read the result with DuckDB (`SELECT * FROM 'PREFIX-*.parquet'`), pyarrow
(`pyarrow.parquet.read_table(glob.glob("PREFIX-*.parquet"))`) or pandas
(`pandas.concat(pandas.read_parquet(f) for f in glob.glob("PREFIX-*.parquet"))`).
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

COLUMNS = ("id", "num_frames", "labels", "top_classes", "top_scores", "embedding", "model_version")
SEGMENT_COLUMNS = ("id", "start_time", "top_classes", "top_scores")  # + "embedding" with embeddings
SEGMENTS_INFIX = "_segments"  # segment rows: {output}_segments-SSSSS-of-NNNNN.parquet


def output_schema(embedding_size: int) -> pa.Schema:
    """The pyarrow schema of the score output for embeddings of length `embedding_size`.

    Args:
        embedding_size: E, the model's embedding length.

    Returns:
        The schema; every column is required (not nullable).
    """
    if embedding_size < 1:
        raise ValueError(f"embedding_size={embedding_size}; expected a positive length")
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("num_frames", pa.int32(), nullable=False),
            pa.field("labels", pa.list_(pa.int32()), nullable=False),
            pa.field("top_classes", pa.list_(pa.int32()), nullable=False),
            pa.field("top_scores", pa.list_(pa.float32()), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), embedding_size), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
        ]
    )


def segment_schema(embedding_size: int | None = None) -> pa.Schema:
    """The pyarrow schema of the segment rows; with `embedding_size` (E) also the segment embeddings."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("start_time", pa.int32(), nullable=False),
        pa.field("top_classes", pa.list_(pa.int32()), nullable=False),
        pa.field("top_scores", pa.list_(pa.float32()), nullable=False),
    ]
    if embedding_size is not None:
        if embedding_size < 1:
            raise ValueError(f"embedding_size={embedding_size}; expected a positive length")
        fields.append(pa.field("embedding", pa.list_(pa.float32(), embedding_size), nullable=False))
    return pa.schema(fields)


class WriteParquet(beam.PTransform):
    """Writes score rows (Arrow tables from `FormatRows`, one per inference batch) as sharded Parquet files.

    Tables go to Beam's `WriteToParquetBatched` as they are: no per-row Python objects on the way.

    Args:
        output: path prefix (local or gs://); files are `{output}-SSSSS-of-NNNNN.parquet`.
        embedding_size: E, for the schema.
        schema: another schema for the rows (e.g. `segment_schema`); default the video rows'.
        num_shards: number of files; 0 (default) lets the runner decide (one per bundle), which avoids
            shuffling the rows. A fixed count groups all tables first.
        codec: Parquet compression codec.
    """

    def __init__(
        self,
        output: str,
        *,
        embedding_size: int,
        schema: pa.Schema | None = None,
        num_shards: int = 0,
        codec: str = "snappy",
    ) -> None:
        super().__init__()
        if num_shards < 0:
            raise ValueError(f"num_shards={num_shards}; expected 0 (runner decides) or a positive count")
        self._output = output
        self._schema = schema if schema is not None else output_schema(embedding_size)
        self._num_shards = num_shards
        self._codec = codec

    def expand(self, tables: beam.PCollection) -> beam.pvalue.PDone:
        return tables | "WriteToParquet" >> beam.io.WriteToParquetBatched(
            self._output,
            self._schema,
            codec=self._codec,
            num_shards=self._num_shards,
            file_name_suffix=".parquet",
        )
