"""BigQuery sink for the scoring pipeline: the table schema, table-spec checks and the write transform.

The schema is the "Score output" contract of docs/design.md (one row per video); the same schema ships as
`deploy/bigquery_schema.json` for `bq mk --table PROJECT:DATASET.TABLE deploy/bigquery_schema.json`,
and a test keeps the two equal. Segment rows (`pipelines.score --segments`) go to a table of their own,
`TABLE_segments` (`segments_table`), with the schema `deploy/bigquery_segments_schema.json`.

Rows arrive as the Parquet sink's row dicts (numpy scalars and arrays allowed) and are converted to
plain JSON types before Beam's `WriteToBigQuery`, which serialises them with `json.dumps` for both
streaming inserts and load-job files.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.options.pipeline_options import GoogleCloudOptions

logger = logging.getLogger(__name__)

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "deploy" / "bigquery_schema.json"
SEGMENTS_SCHEMA_FILE = Path(__file__).resolve().parents[1] / "deploy" / "bigquery_segments_schema.json"

METHODS = ("FILE_LOADS", "STREAMING_INSERTS")

# (name, legacy type name as the BigQuery API reports it, mode, description). INTEGER/FLOAT are the
# API's names for INT64/FLOAT64; REPEATED fields are ARRAY<...> in GoogleSQL.
_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("id", "STRING", "REQUIRED", "Video id from the record's context `id`."),
    ("num_frames", "INTEGER", "REQUIRED", "Frames scored: min(frames in the record, max_frames)."),
    ("labels", "INTEGER", "REPEATED", "Ground-truth class ids from the record; empty if none."),
    ("top_classes", "INTEGER", "REPEATED", "Top-k predicted class ids, by descending score."),
    ("top_scores", "FLOAT", "REPEATED", "Scores of top_classes, descending."),
    ("embedding", "FLOAT", "REPEATED", "Pooled video embedding (the context-gated hidden vector)."),
    ("model_version", "STRING", "REQUIRED", "Version of the model that produced the row."),
)

# Segment rows: one per (video, segment). The embedding column is filled with --segment_embeddings only.
_SEGMENT_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("id", "STRING", "REQUIRED", "Video id from the record's context `id`."),
    ("start_time", "INTEGER", "REQUIRED", "First frame of the segment, in seconds (one frame per second)."),
    ("top_classes", "INTEGER", "REPEATED", "Top-k predicted class ids of the segment, by descending score."),
    ("top_scores", "FLOAT", "REPEATED", "Scores of top_classes, descending."),
    ("embedding", "FLOAT", "REPEATED", "Segment embedding; empty unless scored with --segment_embeddings."),
)

_INT_LISTS = ("labels", "top_classes")
_FLOAT_LISTS = ("top_scores", "embedding")
COLUMNS = tuple(name for name, *_ in _FIELDS)
SEGMENT_COLUMNS = tuple(name for name, *_ in _SEGMENT_FIELDS)

# Project ids: 6-30 chars of lowercase letters, digits and hyphens, optionally domain-scoped
# ("example.com:my-project"). Dataset ids: letters, digits, underscores. Table ids also allow
# hyphens and Unicode letters (BigQuery's rules; Python's \w covers the letters and digits).
_PROJECT = r"(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
_DATASET = r"[A-Za-z0-9_]{1,1024}"
_TABLE = r"[\w-]{1,1024}"
_TABLE_SPEC = re.compile(rf"^(?:(?P<project>{_PROJECT}):)?(?P<dataset>{_DATASET})\.(?P<table>{_TABLE})$")


@dataclass(frozen=True)
class TableSpec:
    """A parsed BigQuery table spec."""

    project: str | None  # None: taken from the pipeline's --project at run time
    dataset: str
    table: str

    def __str__(self) -> str:
        prefix = f"{self.project}:" if self.project else ""
        return f"{prefix}{self.dataset}.{self.table}"


def parse_table_spec(spec: str) -> TableSpec:
    """Check and split a table spec of the form `PROJECT:DATASET.TABLE` or `DATASET.TABLE`.

    Args:
        spec: the table spec, as given to `--bigquery_table`.

    Returns:
        The parsed spec; `project` is None for `DATASET.TABLE`.

    Raises:
        ValueError: the spec is malformed; the message names it and says what is allowed.
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"BigQuery table spec must be a string like 'my-project:my_dataset.scores', got {spec!r}"
        )
    match = _TABLE_SPEC.match(spec.strip())
    if match:
        return TableSpec(match["project"], match["dataset"], match["table"])
    hint = ""
    parts = spec.strip().split(".")
    if ":" not in spec and len(parts) == 3:
        hint = f" (did you mean '{parts[0]}:{parts[1]}.{parts[2]}'? the project is separated by ':')"
    raise ValueError(
        f"Invalid BigQuery table spec {spec!r}{hint}. Use PROJECT:DATASET.TABLE or DATASET.TABLE, e.g. "
        "'my-project:video_scores.nextvlad': the project is 6-30 lowercase letters, digits or hyphens; "
        "the dataset letters, digits or underscores; the table letters, digits, underscores or hyphens."
    )


def bigquery_schema(*, segments: bool = False) -> dict[str, Any]:
    """The score output table schema, in the form Beam's `WriteToBigQuery(schema=...)` takes.

    Args:
        segments: the segment rows' table instead of the video rows'.

    Returns:
        `{"fields": [{"name", "type", "mode", "description"}, ...]}` in column order.
    """
    return {
        "fields": [
            {"name": name, "type": type_, "mode": mode, "description": description}
            for name, type_, mode, description in (_SEGMENT_FIELDS if segments else _FIELDS)
        ]
    }


def segments_table(table: str) -> str:
    """The table segment rows go to, beside the video rows' `table`: `{table}_segments`."""
    return f"{str(parse_table_spec(table))}_segments"


def load_schema_file(path: str | Path = SCHEMA_FILE) -> dict[str, Any]:
    """Read a schema file in the `bq mk --schema` JSON format (a list of fields).

    Args:
        path: the schema file; defaults to the shipped `deploy/bigquery_schema.json`.

    Returns:
        The schema as `{"fields": [...]}`, comparable with `bigquery_schema()`.
    """
    with open(path, encoding="utf-8") as f:
        fields = json.load(f)
    if not isinstance(fields, list):
        raise ValueError(
            f"{path} must hold a JSON list of fields (the `bq mk --schema` format), "
            f"got {type(fields).__name__}"
        )
    return {"fields": fields}


def _int_list(value: Any, column: str, video_id: str) -> list[int]:
    values = np.asarray(value).reshape(-1)
    if values.size and values.dtype.kind not in "iu":
        raise ValueError(
            f"video {video_id!r}: column {column!r} must hold integers, "
            f"got {values.dtype} values {values[:5].tolist()}"
        )
    return values.astype(np.int64).tolist()


def _float_list(value: Any, column: str, video_id: str) -> list[float]:
    # float32 -> float64 is exact, so the FLOAT64 read back narrows to the original float32.
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        bad = values[~np.isfinite(values)][:5].tolist()
        raise ValueError(
            f"video {video_id!r}: column {column!r} holds {bad}, which BigQuery cannot load from JSON; "
            "check the model output for this video"
        )
    return values.tolist()


def to_bigquery_row(row: Mapping[str, Any], *, segments: bool = False) -> dict[str, Any]:
    """Convert one score row (numpy values allowed) to the JSON-able dict BigQuery receives.

    float32 values widen to Python floats exactly, so a FLOAT64 column read back equals the float32
    Parquet value.

    Args:
        row: a mapping with exactly the columns of `bigquery_schema()` (a segment row: those of
            `bigquery_schema(segments=True)`, `embedding` optional).
        segments: the row is a segment row.

    Returns:
        A dict of str / int / float / lists of int or float.

    Raises:
        ValueError: a column is missing or unknown, a list column has the wrong kind of number, or a
            float is NaN or infinite.
    """
    columns = SEGMENT_COLUMNS if segments else COLUMNS
    if segments and "embedding" not in row:
        row = {**row, "embedding": []}
    missing = [c for c in columns if c not in row]
    unknown = sorted(set(row) - set(columns))
    if missing or unknown:
        raise ValueError(
            f"score row for {row.get('id')!r} does not match the BigQuery schema: missing {missing}, "
            f"unknown {unknown}; expected columns {list(columns)}"
        )
    video_id = row["id"]
    if isinstance(video_id, bytes | np.bytes_):
        video_id = video_id.decode("utf-8")
    video_id = str(video_id)
    out: dict[str, Any] = {"id": video_id}
    if segments:
        out["start_time"] = int(row["start_time"])
    else:
        out["num_frames"] = int(row["num_frames"])
        out["model_version"] = str(row["model_version"])
    for column in _INT_LISTS:
        if column in columns:
            out[column] = _int_list(row[column], column, video_id)
    for column in _FLOAT_LISTS:
        out[column] = _float_list(row[column], column, video_id)
    return {c: out[c] for c in columns}


class WriteRowsToBigQuery(beam.PTransform):
    """Append score rows to a BigQuery table, creating it with `bigquery_schema()` if needed.

    Args:
        table: `PROJECT:DATASET.TABLE` or `DATASET.TABLE` (the project then comes from `--project`).
        method: `FILE_LOADS` (batch load jobs, the default: no streaming-insert quota or cost) or
            `STREAMING_INSERTS`.
        custom_gcs_temp_location: `gs://` folder for the load-job files; defaults to the pipeline's
            `--temp_location`. Only used by FILE_LOADS.
        test_client: a Beam apitools `BigqueryV2` client to use instead of the default one (tests point
            it at a local emulator).
        segments: the rows are segment rows (`bigquery_schema(segments=True)`).

    Returns (from `expand`):
        Beam's `WriteResult`; with STREAMING_INSERTS its `failed_rows_with_errors` holds rejected rows.

    Example:
        rows | "WriteBigQuery" >> WriteRowsToBigQuery("my-project:video_scores.nextvlad")
    """

    def __init__(
        self,
        table: str,
        *,
        method: str = "FILE_LOADS",
        custom_gcs_temp_location: str | None = None,
        test_client: Any = None,
        segments: bool = False,
    ) -> None:
        super().__init__()
        self.table_spec = parse_table_spec(table)
        method = method.upper() if isinstance(method, str) else method
        if method not in METHODS:
            raise ValueError(f"Unknown BigQuery write method {method!r}; use one of {list(METHODS)}")
        if custom_gcs_temp_location is not None and not custom_gcs_temp_location.startswith("gs://"):
            raise ValueError(
                f"custom_gcs_temp_location must be a gs:// folder for BigQuery load jobs, got "
                f"{custom_gcs_temp_location!r}"
            )
        self.method = method
        self.custom_gcs_temp_location = custom_gcs_temp_location
        self.test_client = test_client
        self.segments = segments

    def _check_temp_location(self, pipeline: beam.Pipeline) -> None:
        # Beam only notices a missing gs:// temp folder once the job runs; fail at construction time
        # instead, before any scoring starts.
        if self.method != "FILE_LOADS" or self.custom_gcs_temp_location:
            return
        temp_location = pipeline.options.view_as(GoogleCloudOptions).temp_location
        if not (temp_location or "").startswith("gs://"):
            raise ValueError(
                f"Writing to BigQuery with FILE_LOADS needs a gs:// folder for the load files, got "
                f"--temp_location={temp_location!r}; pass --temp_location gs://BUCKET/tmp (or use "
                "STREAMING_INSERTS)"
            )

    def _check_project(self, pipeline: beam.Pipeline) -> None:
        if self.table_spec.project is None and not pipeline.options.view_as(GoogleCloudOptions).project:
            raise ValueError(
                f"BigQuery table {str(self.table_spec)!r} names no project and the pipeline has no "
                f"--project; pass --project PROJECT or a table spec PROJECT:{self.table_spec}"
            )

    def expand(self, pcoll: beam.PCollection) -> Any:
        self._check_project(pcoll.pipeline)
        self._check_temp_location(pcoll.pipeline)
        logger.info("writing rows to BigQuery table %s with %s", self.table_spec, self.method)
        return (
            pcoll
            | "ToBigQueryRows" >> beam.Map(to_bigquery_row, segments=self.segments)
            | "WriteToBigQuery"
            >> WriteToBigQuery(
                table=str(self.table_spec),
                schema=bigquery_schema(segments=self.segments),
                method=self.method,
                create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
                write_disposition=BigQueryDisposition.WRITE_APPEND,
                custom_gcs_temp_location=self.custom_gcs_temp_location,
                test_client=self.test_client,
            )
        )
