"""Parquet sink: sharded file names, the output contract's schema, values read back exactly by DuckDB."""

import apache_beam as beam
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from pipelines.parquet_sink import WriteParquet, output_schema


def _row(i: int, embedding_size: int = 4) -> dict:
    return {
        "id": f"video-{i}",
        "num_frames": 10 + i,
        "labels": list(range(i)),
        "top_classes": [i, 0],
        "top_scores": [0.75, 0.125],
        "embedding": [float(np.float32(i / 3))] * embedding_size,  # float32 values, exact in float64
        "model_version": "m@abc",
    }


def test_schema_is_the_output_contract():
    schema = output_schema(8)
    assert schema.names == [
        "id",
        "num_frames",
        "labels",
        "top_classes",
        "top_scores",
        "embedding",
        "model_version",
    ]
    assert schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert schema.field("num_frames").type == pa.int32() and schema.field("top_scores").type == pa.list_(
        pa.float32()
    )
    assert not any(field.nullable for field in schema)


def test_rows_land_in_named_shards_and_read_back_exactly(tmp_path):
    tables = [
        pa.Table.from_pylist([_row(i) for i in part], schema=output_schema(4)) for part in ([0, 1, 2], [3, 4])
    ]
    with BeamTestPipeline() as p:
        p | beam.Create(tables) | WriteParquet(str(tmp_path / "scores"), embedding_size=4, num_shards=2)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["scores-00000-of-00002.parquet", "scores-00001-of-00002.parquet"]
    got = duckdb.sql(
        f"SELECT id, num_frames, labels, top_classes, top_scores, embedding, model_version "
        f"FROM '{tmp_path}/scores-*.parquet' ORDER BY id"
    ).fetchall()
    assert [list(r) for r in got] == [[*_row(i).values()] for i in range(5)]
    assert pq.read_schema(tmp_path / files[0]) == output_schema(4)


def test_an_embedding_of_the_wrong_length_fails_instead_of_writing(tmp_path):
    with pytest.raises(Exception, match="(?i)length|size"), BeamTestPipeline() as p:
        table = pa.Table.from_pylist([_row(1, embedding_size=3)], schema=output_schema(3))
        p | beam.Create([table]) | WriteParquet(str(tmp_path / "s"), embedding_size=4)
