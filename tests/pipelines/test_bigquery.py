"""BigQuery sink: schema contract, row conversion, table specs, and real writes into bqemulator."""

import json
import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.gcp import bigquery_tools
from apache_beam.options.pipeline_options import PipelineOptions
from scoring_data import read_rows as read_parquet_rows

from pipelines.bigquery import (
    SCHEMA_FILE,
    WriteRowsToBigQuery,
    bigquery_schema,
    load_schema_file,
    parse_table_spec,
    segments_table,
    to_bigquery_row,
)

pytest_plugins = ["emulators"]

# docs/design.md "Score output", BigQuery column; INTEGER and FLOAT are the API's names for
# INT64 and FLOAT64, and ARRAY<T> is a REPEATED field of T.
CONTRACT = {
    "id": ("STRING", "REQUIRED"),
    "num_frames": ("INT64", "REQUIRED"),
    "labels": ("INT64", "REPEATED"),
    "top_classes": ("INT64", "REPEATED"),
    "top_scores": ("FLOAT64", "REPEATED"),
    "embedding": ("FLOAT64", "REPEATED"),
    "model_version": ("STRING", "REQUIRED"),
}
STANDARD_SQL = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "STRING": "STRING"}


def _name_type_mode(fields) -> dict[str, tuple[str, str]]:
    return {f["name"]: (STANDARD_SQL[f["type"]], f["mode"]) for f in fields}


def _score_rows(n: int, *, dim: int = 6, seed: int = 0) -> list[dict]:
    """Rows as the scoring pipeline emits them: numpy scalars and float32/int32 arrays."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        embedding = rng.standard_normal(dim).astype(np.float32)
        # float32 values with long decimal expansions, and the float32 extremes.
        embedding[0] = np.float32(1) / np.float32(3)
        embedding[1] = np.finfo(np.float32).max if i % 2 else np.finfo(np.float32).tiny
        rows.append(
            {
                "id": f"vid{i:03d}",
                "num_frames": np.int32(5 + i),
                "labels": np.array([], np.int32) if i == 0 else np.array([i, 3861], np.int32),
                "top_classes": np.array([2, 0, 1], np.int32),
                "top_scores": np.sort(rng.random(3).astype(np.float32))[::-1],
                "embedding": embedding,
                "model_version": "tiny-v1",
            }
        )
    return rows


def _expected(row: dict) -> dict:
    """What BigQuery must hold for a row: ints, and each float32 widened exactly to float64."""
    return {
        "id": row["id"],
        "num_frames": int(row["num_frames"]),
        "labels": [int(v) for v in row["labels"]],
        "top_classes": [int(v) for v in row["top_classes"]],
        "top_scores": [float(v) for v in row["top_scores"]],
        "embedding": [float(v) for v in row["embedding"]],
        "model_version": row["model_version"],
    }


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


def test_schema_follows_the_output_contract():
    fields = bigquery_schema()["fields"]
    assert [f["name"] for f in fields] == list(CONTRACT)
    assert _name_type_mode(fields) == CONTRACT


def test_shipped_schema_file_equals_the_code_schema():
    assert load_schema_file() == bigquery_schema()


def test_schema_file_is_a_bq_cli_field_list_that_beam_parses():
    # `bq mk --schema FILE` takes a JSON list of fields; Beam takes {"fields": [...]}.
    fields = json.loads(SCHEMA_FILE.read_text())
    assert isinstance(fields, list)
    table_schema = bigquery_tools.parse_table_schema_from_json(json.dumps({"fields": fields}))
    parsed = {f.name: (STANDARD_SQL[f.type], f.mode) for f in table_schema.fields}
    assert parsed == CONTRACT


def test_load_schema_file_rejects_a_non_list(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"fields": []}))
    with pytest.raises(ValueError, match="JSON list of fields"):
        load_schema_file(path)


# --------------------------------------------------------------------------------------------------
# Row conversion
# --------------------------------------------------------------------------------------------------


def test_numpy_row_becomes_plain_json_with_exact_floats():
    row = _score_rows(2)[1]
    out = to_bigquery_row(row)
    decoded = json.loads(json.dumps(out))  # what streaming inserts and load files carry
    assert decoded == _expected(row)
    assert type(decoded["num_frames"]) is int
    assert all(type(v) is float for v in decoded["embedding"])
    # Reading the FLOAT64 back and narrowing gives the original float32 bit for bit.
    np.testing.assert_array_equal(np.asarray(decoded["embedding"], np.float32), row["embedding"])


def test_bytes_id_is_decoded_and_empty_labels_stay_empty():
    row = dict(_score_rows(1)[0], id=b"abc")
    out = to_bigquery_row(row)
    assert out["id"] == "abc"
    assert out["labels"] == []


def test_row_with_missing_or_unknown_columns_is_rejected_by_name():
    row = _score_rows(1)[0]
    del row["embedding"]
    row["extra"] = 1
    with pytest.raises(ValueError, match=r"missing \['embedding'\].*unknown \['extra'\]"):
        to_bigquery_row(row)


def test_non_finite_score_names_the_video_and_column():
    row = _score_rows(1)[0]
    row["top_scores"] = np.array([math.nan], np.float32)
    with pytest.raises(ValueError, match=r"video 'vid000'.*'top_scores'.*nan"):
        to_bigquery_row(row)


# --------------------------------------------------------------------------------------------------
# Table specs and transform arguments
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "project", "dataset", "table"),
    [
        ("my-project:video_scores.nextvlad", "my-project", "video_scores", "nextvlad"),
        ("video_scores.nextvlad_2024-01", None, "video_scores", "nextvlad_2024-01"),
        ("example.com:my-project:ds.t", "example.com:my-project", "ds", "t"),
    ],
)
def test_valid_table_specs_are_split(spec, project, dataset, table):
    parsed = parse_table_spec(spec)
    assert (parsed.project, parsed.dataset, parsed.table) == (project, dataset, table)
    assert str(parsed) == spec


@pytest.mark.parametrize(
    "spec",
    ["nextvlad", "my-project:nextvlad", "My_Project:ds.t", "my-project:ds-x.t", "my-project:ds.t.x", ""],
)
def test_malformed_table_specs_are_rejected_by_name(spec):
    with pytest.raises(ValueError, match=r"Invalid BigQuery table spec .*PROJECT:DATASET\.TABLE") as err:
        parse_table_spec(spec)
    assert repr(spec) in str(err.value)


def test_dotted_project_spec_suggests_the_colon_form():
    with pytest.raises(ValueError, match=r"did you mean 'my-project:ds\.t'"):
        parse_table_spec("my-project.ds.t")


def test_unknown_method_and_local_temp_folder_are_rejected():
    with pytest.raises(ValueError, match="'STORAGE_WRITE_API'"):
        WriteRowsToBigQuery("ds.t", method="STORAGE_WRITE_API")
    with pytest.raises(ValueError, match="gs:// folder.*'/tmp/x'"):
        WriteRowsToBigQuery("ds.t", custom_gcs_temp_location="/tmp/x")


def test_float_labels_are_rejected_by_name():
    row = dict(_score_rows(1)[0], labels=np.array([1.5]))
    with pytest.raises(ValueError, match=r"video 'vid000'.*'labels' must hold integers"):
        to_bigquery_row(row)


def test_table_without_project_needs_the_project_option():
    pipeline = beam.Pipeline(options=PipelineOptions(["--temp_location=gs://bucket/tmp"]))
    rows = pipeline | beam.Create(_score_rows(1))
    with pytest.raises(ValueError, match=r"'ds\.t' names no project.*--project"):
        _ = rows | WriteRowsToBigQuery("ds.t")


def test_file_loads_without_a_gs_temp_location_fails_while_building_the_pipeline():
    pipeline = beam.Pipeline(options=PipelineOptions(["--temp_location=/tmp/local"]))
    rows = pipeline | beam.Create(_score_rows(1))
    with pytest.raises(ValueError, match=r"--temp_location='/tmp/local'"):
        _ = rows | WriteRowsToBigQuery("my-project:ds.t")


# --------------------------------------------------------------------------------------------------
# Real writes into the BigQuery emulator
# --------------------------------------------------------------------------------------------------


def _write(rows, table, method, bigquery_emulator, gcs_emulator) -> None:
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as pipeline:
        _ = (
            pipeline
            | "CreateRows" >> beam.Create(rows)
            | "WriteBigQuery"
            >> WriteRowsToBigQuery(
                table,
                method=method,
                custom_gcs_temp_location=gcs_emulator.url("bq-tmp"),
                test_client=bigquery_emulator.make_test_client(),
            )
        )


@pytest.mark.parametrize("method", ["STREAMING_INSERTS", "FILE_LOADS"])
def test_rows_round_trip_exactly_through_bigquery(method, bigquery_emulator, gcs_emulator):
    table = bigquery_emulator.unique_table(method.lower())
    rows = _score_rows(4)
    _write(rows, table, method, bigquery_emulator, gcs_emulator)

    assert bigquery_emulator.read_rows(table) == [_expected(r) for r in rows]
    created = bigquery_emulator.get_table(table)
    assert {f.name: (STANDARD_SQL[f.field_type], f.mode) for f in created.schema} == CONTRACT


def test_second_write_appends_to_the_existing_table(bigquery_emulator, gcs_emulator):
    table = bigquery_emulator.unique_table("append")
    first, second = _score_rows(2, seed=1), _score_rows(3, seed=2)[2:]
    for rows in (first, second):
        _write(rows, table, "FILE_LOADS", bigquery_emulator, gcs_emulator)
    assert bigquery_emulator.read_rows(table) == [_expected(r) for r in first + second]


# --------------------------------------------------------------------------------------------------
# The scoring pipeline into the emulator
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["FILE_LOADS", "STREAMING_INSERTS"])
def test_score_pipeline_writes_the_same_rows_to_bigquery_as_to_parquet(
    method, bigquery_emulator, gcs_emulator, scoring_inputs, tmp_path
):
    from pipelines import score

    table = bigquery_emulator.unique_table(f"score_{method.lower()}")
    output = tmp_path / "scores"
    top_k = 5
    summary = score.run(
        [
            "--runner=DirectRunner",
            f"--input={scoring_inputs.pattern}",
            f"--model={scoring_inputs.model_path}",
            f"--output={output}",
            "--output_format",
            "parquet",
            "bigquery",
            f"--bigquery_table={table}",
            f"--bigquery_method={method}",
            f"--temp_location={gcs_emulator.url('score-tmp')}",
            f"--top_k={top_k}",
            "--batch_size=4",
        ],
        bigquery_test_client=bigquery_emulator.make_test_client(),
    )
    assert summary.videos_scored == len(scoring_inputs.ids)

    from_bigquery = bigquery_emulator.read_rows(table)
    from_parquet = read_parquet_rows(f"{output}-*-of-*.parquet")
    assert [r["id"] for r in from_bigquery] == sorted(scoring_inputs.ids)
    # pyarrow widens float32 to Python floats exactly, so the FLOAT64 values must match bit for bit.
    assert from_bigquery == from_parquet
    for row in from_bigquery:
        assert len(row["embedding"]) == scoring_inputs.hidden_size
        assert len(row["top_classes"]) == top_k
        assert row["top_scores"] == sorted(row["top_scores"], reverse=True)


def test_score_pipeline_writes_segment_rows_to_their_own_table(
    bigquery_emulator, gcs_emulator, scoring_inputs, tmp_path
):
    from pipelines import score

    table = bigquery_emulator.unique_table("score_segments")
    output = tmp_path / "scores"
    summary = score.run(
        [
            "--runner=DirectRunner",
            f"--input={scoring_inputs.pattern}",
            f"--model={scoring_inputs.model_path}",
            f"--output={output}",
            "--output_format",
            "parquet",
            "bigquery",
            f"--bigquery_table={table}",
            "--bigquery_method=STREAMING_INSERTS",
            "--segments",
            "--segment_top_k=2",
        ],
        bigquery_test_client=bigquery_emulator.make_test_client(),
    )
    segments = sorted(
        bigquery_emulator.read_rows(segments_table(table)), key=lambda r: (r["id"], r["start_time"])
    )
    from_parquet = sorted(
        read_parquet_rows(f"{output}_segments-*-of-*.parquet"), key=lambda r: (r["id"], r["start_time"])
    )
    assert len(segments) == summary.segments_scored > 0
    assert segments == [{**row, "embedding": []} for row in from_parquet]
    created = bigquery_emulator.get_table(segments_table(table))
    assert [f.name for f in created.schema] == ["id", "start_time", "top_classes", "top_scores", "embedding"]
    assert [r["id"] for r in bigquery_emulator.read_rows(table)] == sorted(scoring_inputs.ids)
