"""The scoring pipeline's building blocks: read, parse, key, format rows, and the dead letter.

```
ReadFrameRecords ─► ParseRecords ─► RunInference (batches) ─► FormatRows (Arrow tables) ─► (sink)
   │ corrupt files      │ bad records
   └────────────────────┴──────────────► WriteDeadLetter  ({output}-errors-SSSSS-of-NNNNN.jsonl)
```

Every record read ends up either as one output row or as one dead letter, so
`rows written + dead letters == records_read` (Beam counter namespace `nextvlad`). A dead letter is a JSON
object with `source_file`, `byte_offset` (of the record in its file), `id` (null when unknown), `reason`
(a slug: one of `nextvlad.records.INVALID_REASONS` or `corrupt_file`), `message` and `record_base64` (the raw
record, so it can be fixed and replayed; null for the unreadable remainder of a corrupt file).
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from nextvlad import records
from nextvlad.records import masked_crc32c

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "nextvlad"
DEAD_LETTER = "dead_letter"  # tag of the dead-letter output of ReadRecords and ParseRecords
CORRUPT_FILE = "corrupt_file"  # dead-letter reason for bytes that are not valid TFRecord framing


class Record(NamedTuple):
    """One serialized record and where it came from."""

    source_file: str
    byte_offset: int  # where the record's framing starts in the file
    data: bytes


class CorruptFileError(ValueError):
    """A TFRecord file is truncated or fails its CRC checks (the message names the file and offset).

    Attributes:
        path: the file.
        byte_offset: where the unreadable record starts.
        problem: what is wrong, without advice (for the dead letter).
        data: the record's payload when only its CRC failed, else None.
    """

    def __init__(self, path: str, byte_offset: int, what: str, *, data: bytes | None = None) -> None:
        self.path, self.byte_offset, self.data = path, byte_offset, data
        self.problem = f"TFRecord file {path} {what} at byte {byte_offset}"
        super().__init__(
            f"{self.problem}. Replace or remove the file, or pass --skip_corrupt_files to list its "
            "unreadable part in the dead letter and go on"
        )

    def __reduce__(self):
        return (_corrupt_file_error, (self.path, self.byte_offset, self.problem, self.data, str(self)))


def _corrupt_file_error(path: str, byte_offset: int, problem: str, data: bytes | None, text: str):
    error = CorruptFileError.__new__(CorruptFileError)
    ValueError.__init__(error, text)
    error.path, error.byte_offset, error.problem, error.data = path, byte_offset, problem, data
    return error


def dead_letter(
    source_file: str,
    byte_offset: int | None,
    reason: str,
    message: str,
    *,
    video_id: str | None = None,
    data: bytes | None = None,
) -> dict[str, Any]:
    """Builds one dead-letter entry and counts it under `dead_letters_<reason>`.

    Args:
        source_file: the file the record came from.
        byte_offset: where the record starts in that file (None for a whole file, e.g. a video).
        reason: short slug for counting (`InvalidRecordError.reason` or `corrupt_file`).
        message: human-readable explanation.
        video_id: the record's id when it could be read.
        data: the raw record bytes, stored base64-encoded for replay.

    Returns:
        The JSON-serializable dead-letter dict.
    """
    Metrics.counter(METRICS_NAMESPACE, f"dead_letters_{reason}").inc()
    return {
        "source_file": source_file,
        "byte_offset": byte_offset,
        "id": video_id,
        "reason": reason,
        "message": message,
        "record_base64": base64.b64encode(data).decode("ascii") if data is not None else None,
    }


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_tfrecord_file(path: str) -> Iterator[Record | CorruptFileError]:
    """Reads the records of one TFRecord file (local or gs://; `.gz` is decompressed), checking every CRC.

    Args:
        path: the file.

    Yields:
        A `Record` per valid record. At the first unreadable spot a `CorruptFileError` is yielded (not
        raised) and reading stops, except that a record whose payload alone fails its CRC is yielded as
        an error carrying `.data` and reading continues, since its length field was intact.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                yield CorruptFileError(
                    path, offset, f"ends inside a record header ({len(header)} of 12 bytes): truncated"
                )
                return
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                yield CorruptFileError(
                    path, offset, "has a record length that fails its CRC check: the file is corrupt"
                )
                return
            body = f.read(length + 4)
            if len(body) < length + 4:
                yield CorruptFileError(
                    path, offset, f"ends inside a record ({len(body)} of {length + 4} bytes): truncated"
                )
                return
            data = body[:length]
            if masked_crc32c(data) != struct.unpack("<I", body[length:])[0]:
                yield CorruptFileError(
                    path, offset, "has a record whose payload fails its CRC check", data=data
                )
            else:
                yield Record(path, offset, data)
            offset += 12 + length + 4


class _ReadFileFn(beam.DoFn):
    def __init__(self, skip_corrupt_files: bool) -> None:
        self._skip_corrupt_files = skip_corrupt_files

    def setup(self) -> None:
        self._records_read = Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._files_read = Metrics.counter(METRICS_NAMESPACE, "files_read")

    def process(self, path: str) -> Iterator[Any]:
        self._files_read.inc()
        for item in read_tfrecord_file(path):
            # A corrupt remainder counts as one record read, so that rows + dead letters == records read.
            self._records_read.inc()
            if isinstance(item, Record):
                yield item
            elif self._skip_corrupt_files:
                logger.warning("skipping corrupt data: %s", item.problem)
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER,
                    dead_letter(item.path, item.byte_offset, CORRUPT_FILE, item.problem, data=item.data),
                )
            else:
                raise item


class ReadRecords(beam.PTransform):
    """Reads every record of the TFRecord files matching a pattern, with their file name and offset.

    Files are matched at run time and reshuffled so that they spread over workers (a TFRecord file cannot
    be split: one file is one unit of parallelism). Records are read with their CRCs checked. A truncated or
    corrupt file fails the job with an error naming it, or with `skip_corrupt_files` goes to the dead letter.

    Beam's `ReadAllFromTFRecord(with_filename=True)` also knows the file, but its errors do not name the
    file and cannot be routed to a dead letter, hence this reader.

    Args:
        file_pattern: glob (local or gs://).
        skip_corrupt_files: dead-letter unreadable file parts instead of failing.

    Returns (expand):
        A `DoOutputsTuple`: main output of `Record`, tagged `dead_letter` output of dead-letter dicts.
    """

    def __init__(self, file_pattern: str, *, skip_corrupt_files: bool = False) -> None:
        super().__init__()
        self._file_pattern = file_pattern
        self._skip_corrupt_files = skip_corrupt_files

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self._file_pattern, fileio.EmptyMatchTreatment.DISALLOW)
            | "FilePaths" >> beam.Map(lambda metadata: metadata.path)
            | "ReshuffleFiles" >> beam.Reshuffle()
            | "ReadFiles"
            >> beam.ParDo(_ReadFileFn(self._skip_corrupt_files)).with_outputs(DEAD_LETTER, main="records")
        )


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


class _ParseFn(beam.DoFn):
    def __init__(self, input_format: str, num_classes: int, max_frames: int | None) -> None:
        self._input_format = input_format
        self._num_classes = num_classes
        self._max_frames = max_frames

    def setup(self) -> None:
        self._outside_vocabulary = Metrics.counter(METRICS_NAMESPACE, "labels_outside_vocabulary")

    def process(self, record: Record) -> Iterator[Any]:
        try:
            # Ground-truth labels are carried, not checked against the model's classes: a video labeled
            # with another vocabulary is still scored (and counted below).
            if self._input_format == "frame":
                example = records.parse_frame_example(
                    record.data, max_frames=self._max_frames, num_classes=None
                )
            else:
                example = records.parse_video_example(record.data, num_classes=None)
                example["num_frames"] = 0  # video-level records carry no frame count
        except records.InvalidRecordError as e:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                dead_letter(
                    record.source_file,
                    record.byte_offset,
                    e.reason,
                    e.message,
                    video_id=e.video_id,
                    data=record.data,
                ),
            )
            return
        except Exception as e:
            # Not a data problem the parser knows about: fail loudly, but say which record.
            raise RuntimeError(
                f"Parsing the record at byte {record.byte_offset} of {record.source_file} failed: {e!r}"
            ) from e
        if any(label < 0 or label >= self._num_classes for label in example["labels"]):
            self._outside_vocabulary.inc()
        yield example


class ParseRecords(beam.PTransform):
    """Parses and validates YouTube-8M records; invalid ones go to the dead letter.

    Frames stay uint8 as stored (views of the record's bytes): the model dequantizes them itself.

    Args:
        input_format: "frame" (SequenceExample) or "video" (Example with mean_rgb/mean_audio).
        num_classes: the model's class count; videos whose ground-truth labels lie outside [0, num_classes)
            are scored anyway and counted in the `labels_outside_vocabulary` counter.
        max_frames: frames kept per video (the model's own limit; later frames are not copied).

    Returns (expand):
        A `DoOutputsTuple`: main output of example dicts (`id`, `labels`, `num_frames` and `rgb` uint8
        [T, 1024] / `audio` uint8 [T, 128], plus the segment fields when the record has them; or `mean_rgb` /
        `mean_audio` float32 with `num_frames = 0` at video level), tagged `dead_letter` output.
    """

    def __init__(
        self, *, input_format: str = "frame", num_classes: int, max_frames: int | None = 300
    ) -> None:
        super().__init__()
        if input_format not in ("frame", "video"):
            raise ValueError(f"input_format={input_format!r}; expected 'frame' or 'video'")
        self._fn = _ParseFn(input_format, num_classes, max_frames)

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return records | "Parse" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="examples")


# --------------------------------------------------------------------------------------------------
# Length bucketing
# --------------------------------------------------------------------------------------------------


class _BucketByLengthFn(beam.DoFn):
    def __init__(self, boundaries: list[int], batch_size: int) -> None:
        self._boundaries = boundaries
        self._batch_size = batch_size

    def start_bundle(self) -> None:
        self._buckets: dict[int, list[tuple[Any, Any]]] = {}

    def process(self, example: dict[str, Any], window=beam.DoFn.WindowParam) -> Iterator[Any]:
        bucket = self._buckets.setdefault(bisect.bisect_right(self._boundaries, example["num_frames"]), [])
        bucket.append((example, window))
        if len(bucket) == self._batch_size:
            yield from (example for example, _ in bucket)
            bucket.clear()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        rest = sorted((item for bucket in self._buckets.values() for item in bucket), key=_frames_of)
        self._buckets = {}
        for example, window in rest:
            yield WindowedValue(example, window.max_timestamp(), [window])


def _frames_of(item: tuple[dict[str, Any], Any]) -> int:
    return item[0]["num_frames"]


class BucketByLength(beam.PTransform):
    """Reorders parsed videos so that consecutive runs of `batch_size` have similar lengths.

    Videos wait in one buffer per length bucket; a bucket that reaches `batch_size` videos is emitted at
    once, as one run, so that the next `BatchElements` of exactly that size (the handler's) makes it one
    batch, padded only to the longest video of its bucket. What is left when a bundle ends is emitted
    sorted by length. Memory is bounded (fewer than `batch_size` videos per bucket), nothing is keyed or
    shuffled, and no video is dropped or duplicated: only the order changes, within a bundle.

    Beam's own length-aware batching (`batch_length_fn` / `batch_bucket_boundaries`) is not used: it keys
    every video and keeps it in state, which costs a shuffle of all the frames on Dataflow, and Beam 2.77's
    DirectRunner fails on its processing-time timer in this pipeline.

    Args:
        boundaries: frame counts that start a new bucket, e.g. `[120, 180, 240, 300]` (a video of 300
            frames or more falls in the last bucket).
        batch_size: the inference batch size.
    """

    def __init__(self, boundaries: Sequence[int], *, batch_size: int) -> None:
        super().__init__()
        if not boundaries or any(int(b) < 1 for b in boundaries):
            raise ValueError(f"boundaries={list(boundaries)}; expected positive frame counts")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected a positive number of videos per batch")
        self._fn = _BucketByLengthFn(sorted(int(b) for b in boundaries), batch_size)

    def expand(self, examples: beam.PCollection) -> beam.PCollection:
        return examples | "Bucket" >> beam.ParDo(self._fn)


# --------------------------------------------------------------------------------------------------
# Output rows
# --------------------------------------------------------------------------------------------------


class SegmentScores(NamedTuple):
    """The segments of one inference batch's videos, scored and reduced to their top classes."""

    video_index: np.ndarray  # [S] int64: the segment's video in `ScoredBatch.examples`
    start_time: np.ndarray  # [S] int64: first frame (= second) of the segment
    top_classes: np.ndarray  # [S, k] int32, best first
    top_scores: np.ndarray  # [S, k] float32
    embeddings: np.ndarray | None  # [S, E] float32, when segment embeddings are written


class ScoredBatch(NamedTuple):
    """One inference batch: the parsed videos and the model's outputs for them, row for row."""

    examples: list[dict[str, Any]]
    predictions: np.ndarray  # [B, C] float32
    embeddings: np.ndarray  # [B, E] float32
    segments: SegmentScores | None = None  # with segment scoring: every segment of these videos


def _int_lists(values: list[list[int]]) -> pa.Array:
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    flat = np.fromiter((x for v in values for x in v), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _fixed_lists(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    width = matrix.shape[1]
    values = pa.array(np.ascontiguousarray(matrix).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(values, width)


def _fixed_as_lists(matrix: np.ndarray, value_type: pa.DataType) -> pa.Array:
    offsets = np.arange(0, matrix.size + 1, max(matrix.shape[1], 1), dtype=np.int32)[: len(matrix) + 1]
    values = pa.array(np.ascontiguousarray(matrix).reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def rows_table(batch: ScoredBatch, *, top_k: int, model_version: str, schema: pa.Schema) -> pa.Table:
    """The output rows of one scored batch as an Arrow table (top-k over the whole `[B, C]` matrix)."""
    from nextvlad.metrics import top_k as top_k_fn

    classes, scores = top_k_fn(batch.predictions, top_k)  # [B, k] each, best first
    examples = batch.examples
    columns = {
        "id": pa.array([e["id"] for e in examples], type=pa.string()),
        "num_frames": pa.array(np.array([e["num_frames"] for e in examples], dtype=np.int32)),
        "labels": _int_lists([e["labels"] for e in examples]),
        "top_classes": _fixed_as_lists(classes.astype(np.int32, copy=False), pa.int32()),
        "top_scores": _fixed_as_lists(scores.astype(np.float32, copy=False), pa.float32()),
        "embedding": _fixed_lists(batch.embeddings.astype(np.float32, copy=False), pa.float32()),
        "model_version": pa.array([model_version] * len(examples), type=pa.string()),
    }
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


class _FormatRowsFn(beam.DoFn):
    def __init__(self, top_k: int, model_version: str, embedding_size: int) -> None:
        self._top_k = top_k
        self._model_version = model_version
        self._embedding_size = embedding_size

    def setup(self) -> None:
        from pipelines.parquet_sink import output_schema

        self._schema = output_schema(self._embedding_size)
        self._scored = Metrics.counter(METRICS_NAMESPACE, "videos_scored")

    def process(self, batch: ScoredBatch) -> Iterator[pa.Table]:
        table = rows_table(batch, top_k=self._top_k, model_version=self._model_version, schema=self._schema)
        self._scored.inc(table.num_rows)
        yield table


class FormatRows(beam.PTransform):
    """`ScoredBatch` -> one Arrow table of output rows per batch (docs/design.md "Score output").

    Columns (the schema of `pipelines.parquet_sink.output_schema`): `id` string, `num_frames` int32,
    `labels` list<int32>, `top_classes` list<int32> (best first), `top_scores` list<float32>, `embedding`
    fixed-size list<float32> (length E), `model_version` string. `RowDicts` turns the tables into
    JSON-compatible dicts for sinks that need rows (BigQuery).

    Args:
        top_k: classes kept per video.
        model_version: written into every row.
        embedding_size: E, the model's embedding length.
    """

    def __init__(self, *, top_k: int, model_version: str, embedding_size: int) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k={top_k}; expected a positive number of classes")
        self._fn = _FormatRowsFn(top_k, model_version, embedding_size)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Format" >> beam.ParDo(self._fn)


def segment_rows_table(batch: ScoredBatch, *, schema: pa.Schema) -> pa.Table:
    """The segment rows of one scored batch as an Arrow table (`pipelines.parquet_sink.segment_schema`)."""
    segments = batch.segments
    columns = {
        "id": pa.array([batch.examples[i]["id"] for i in segments.video_index], type=pa.string()),
        "start_time": pa.array(segments.start_time.astype(np.int32)),
        "top_classes": _fixed_as_lists(segments.top_classes.astype(np.int32, copy=False), pa.int32()),
        "top_scores": _fixed_as_lists(segments.top_scores.astype(np.float32, copy=False), pa.float32()),
    }
    if segments.embeddings is not None:
        columns["embedding"] = _fixed_lists(segments.embeddings.astype(np.float32, copy=False), pa.float32())
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


class _FormatSegmentRowsFn(beam.DoFn):
    def __init__(self, embedding_size: int | None) -> None:
        self._embedding_size = embedding_size

    def setup(self) -> None:
        from pipelines.parquet_sink import segment_schema

        self._schema = segment_schema(self._embedding_size)
        self._rows = Metrics.counter(METRICS_NAMESPACE, "segment_rows")

    def process(self, batch: ScoredBatch) -> Iterator[pa.Table]:
        if batch.segments is None or not batch.segments.start_time.size:
            return
        table = segment_rows_table(batch, schema=self._schema)
        self._rows.inc(table.num_rows)
        yield table


class FormatSegmentRows(beam.PTransform):
    """`ScoredBatch` -> one Arrow table of segment rows per batch (docs/design.md "Score output").

    Columns (`pipelines.parquet_sink.segment_schema`): `id` string, `start_time` int32 (the segment's first
    frame, in seconds), `top_classes` list<int32> (best first), `top_scores` list<float32>, and with
    segment embeddings `embedding` fixed-size list<float32> (length E).

    Args:
        embedding_size: E when the segments' embeddings are written, else None.
    """

    def __init__(self, *, embedding_size: int | None = None) -> None:
        super().__init__()
        self._fn = _FormatSegmentRowsFn(embedding_size)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "FormatSegments" >> beam.ParDo(self._fn)


class RowDicts(beam.PTransform):
    """Arrow tables of output rows -> one dict per row (`id` str, lists as Python lists)."""

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return tables | "ToRows" >> beam.FlatMap(lambda table: table.to_pylist())


class WriteDeadLetter(beam.PTransform):
    """Writes dead-letter dicts as JSON lines to `{output}-errors-SSSSS-of-NNNNN.jsonl`.

    An empty shard is written when nothing failed, so a run always leaves an errors file to check.

    Args:
        output: the run's output prefix.
        num_shards: number of files; 0 lets the runner decide.
    """

    def __init__(self, output: str, *, num_shards: int = 0) -> None:
        super().__init__()
        self._prefix = f"{output}-errors"
        self._num_shards = num_shards

    def expand(self, dead_letters: beam.PCollection) -> beam.pvalue.PDone:
        return (
            dead_letters
            | "ToJson" >> beam.Map(lambda entry: json.dumps(entry, sort_keys=True))
            | "WriteJsonLines"
            >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)
        )
