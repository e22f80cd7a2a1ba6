"""Score YouTube-8M videos with a trained NeXtVLAD model: one row per video (embedding + top-k labels).

Run locally:

    python -m pipelines.score --runner=DirectRunner \\
        --input 'data/frame/train*.tfrecord' --model runs/paper --output scores/run1

writes `scores/run1-SSSSS-of-NNNNN.parquet` (schema: `pipelines.parquet_sink`) and the dead letter
`scores/run1-errors-SSSSS-of-NNNNN.jsonl` (records that could not be scored, with the reason and the raw
record), then prints a one-line summary. Every flag this module does not define goes to Beam's
`PipelineOptions`, so the same command runs on Dataflow with `--runner=DataflowRunner --project ...
--region ... --temp_location gs://...` (see deploy/ for the GPU worker image and flags). Write to BigQuery
with `--output_format bigquery --bigquery_table PROJECT:DATASET.TABLE` (add `parquet` to write both);
the dead letter still goes to `--output`.

Pipeline: ReadFrameRecords (ReadVideoRecords) -> ParseRecords -> BucketByLength (videos of similar length
in runs of --batch_size; `--length_buckets none` skips it) -> RunInference -> FormatRows -> WriteParquet /
WriteBigQuery; bad records and corrupt files -> WriteDeadLetter. With `--segments` the same RunInference
also scores every 5-frame segment of each video (the 2019 segment task), and FormatSegmentRows ->
WriteSegmentParquet writes them to `scores/run1_segments-SSSSS-of-NNNNN.parquet`.

Checked before anything runs, each with a message saying what to pass: the model exists and is a NeXtVLAD
scoring model, `--input_format` agrees with the model's inputs and the data, `--top_k` is at most the
model's class count, the input pattern matches files, the output location is writable and holds no
earlier run's shards (`--overwrite` replaces them; see `pipelines.output_files`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from nextvlad.segments import SEGMENT_LENGTH, SEGMENT_STRIDE
from nextvlad.serving import check_first_record, describe_id_layout
from pipelines.handler import (
    PRECISIONS,
    InvalidModelError,
    ModelInfo,
    NeXtVLADModelHandler,
    SegmentOptions,
    default_model_version,
    enable_gpu_memory_growth,
    inspect_model,
)
from pipelines.parquet_sink import SEGMENTS_INFIX, WriteParquet, segment_schema
from pipelines.transforms import (
    DEAD_LETTER,
    METRICS_NAMESPACE,
    BucketByLength,
    FormatRows,
    FormatSegmentRows,
    ParseRecords,
    ReadRecords,
    Record,
    RowDicts,
    WriteDeadLetter,
    read_tfrecord_file,
)

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("parquet", "bigquery")
DEFAULT_TOP_K = 20
DEFAULT_SEGMENT_BATCH = 512  # segments per model call with --segments
# Length-bucket boundaries in frames: most YouTube-8M videos have 120-300 (one per second, at most 300).
DEFAULT_LENGTH_BUCKETS = (120, 180, 240, 300)


class ScoreSetupError(ValueError):
    """The job cannot start as configured; the message names the bad value and what to pass instead."""


@dataclasses.dataclass(frozen=True)
class ScoreSummary:
    """Counts and speed of one scoring run, from the pipeline's metrics."""

    records_read: int  # records read (a corrupt file's unreadable remainder counts as one)
    videos_scored: int  # output rows
    dead_letters: dict[str, int]  # dead letters by reason
    batches: int  # inference calls
    seconds: float  # wall time of the pipeline run (model loading included)
    output: str  # the output prefix
    dry_run: bool = False  # --dry_run: checked and built, not run
    labels_outside_vocabulary: int = 0  # scored videos whose ground-truth labels the model does not know
    segments_scored: int = 0  # with --segments: segment rows
    video_model_seconds: float = 0.0  # with --segments: time in the model for the videos ...
    segment_model_seconds: float = 0.0  # ... and for their segments

    @property
    def num_dead_letters(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def videos_per_second(self) -> float:
        return self.videos_scored / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line human summary printed at the end of a run."""
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dead_letters.items()))
        dead = f"{self.num_dead_letters} dead letters ({reasons})" if reasons else "0 dead letters"
        outside = ""
        if self.labels_outside_vocabulary:
            outside = (
                f" ({self.labels_outside_vocabulary} of them with labels outside the model's classes, "
                "kept in the labels column)"
            )
        return (
            f"Scored {self.videos_scored} videos{outside} of {self.records_read} records read; {dead}; "
            f"{self.batches} batches in {self.seconds:.1f}s ({self.videos_per_second:.1f} videos/s); "
            f"output {self.output}-*{self._segments_line()}"
        )

    def _segments_line(self) -> str:
        if not self.segments_scored:
            return ""
        per_video = self.segments_scored / max(self.videos_scored, 1)
        cost = ""
        if self.video_model_seconds > 0:
            ms = 1e3 * self.segment_model_seconds / max(self.videos_scored, 1)
            ratio = self.segment_model_seconds / self.video_model_seconds
            cost = f"; segments cost {ms:.1f} ms of model time per video, {ratio:.2f}x the video's own"
        return (
            f"\n  {self.segments_scored} segments ({per_video:.1f} per video){cost}; "
            f"output {self.output}_segments-*"
        )


def _parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: an abbreviation must not swallow one of Beam's flags.
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.score",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Every other flag (e.g. --runner, --project, --direct_num_workers) goes to Beam.",
    )
    parser.add_argument("--input", help="required: TFRecord glob, local or gs:// (quote it in the shell)")
    parser.add_argument("--model", help="required: model directory holding model.keras, or a .keras file")
    parser.add_argument(
        "--output",
        help="required: output path prefix, local or gs://; a prefix that already holds a run's files is "
        "refused unless --overwrite is given",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run at --output: once every check has passed, delete its Parquet, "
        "dead-letter and segment shards (any shard count; other files are left alone), then score. "
        "BigQuery rows are appended either way",
    )
    parser.add_argument(
        "--output_format",
        nargs="+",
        choices=OUTPUT_FORMATS,
        default=["parquet"],
        help="one or both of parquet (default) and bigquery",
    )
    parser.add_argument("--bigquery_table", help="PROJECT:DATASET.TABLE (or DATASET.TABLE with --project)")
    parser.add_argument(
        "--bigquery_method",
        default="FILE_LOADS",
        choices=("FILE_LOADS", "STREAMING_INSERTS"),
        help="BigQuery write method",
    )
    parser.add_argument(
        "--bigquery_temp_location", help="gs:// folder for BigQuery load files (default: --temp_location)"
    )
    parser.add_argument(
        "--top_k",
        type=int,
        help=f"classes kept per video (default {DEFAULT_TOP_K}, or all of a smaller model's)",
    )
    parser.add_argument("--batch_size", type=int, default=64, help="videos per inference batch (default 64)")
    parser.add_argument(
        "--num_shards", type=int, default=0, help="Parquet files to write; 0 (default) lets the runner decide"
    )
    parser.add_argument(
        "--input_format",
        choices=("frame", "video"),
        help="frame (SequenceExample) or video (mean_rgb/mean_audio); default: what the model takes",
    )
    parser.add_argument("--max_frames", type=int, help=argparse.SUPPRESS)  # refused: the model's own limit
    parser.add_argument(
        "--model_version",
        help="written into every row (default: model directory name @ short sha256 of the file)",
    )
    parser.add_argument(
        "--skip_corrupt_files",
        action="store_true",
        help="list truncated/corrupt TFRecord data in the dead letter instead of failing the job",
    )
    parser.add_argument("--pca_eigenvals", help=argparse.SUPPRESS)  # refused: the model stores its scale
    parser.add_argument(
        "--length_buckets",
        type=_frame_counts,
        default=list(DEFAULT_LENGTH_BUCKETS),
        help="comma-separated frame counts that start a new length bucket (default "
        f"{','.join(map(str, DEFAULT_LENGTH_BUCKETS))}: YouTube-8M's lengths). Videos of one bucket are "
        "batched together (a bounded buffer per bucket and bundle: no shuffle, no keyed state) and each "
        "batch is padded to its bucket's end, so compiled backends see a few shapes. On a YouTube-8M-like "
        "length mix this halved the padded frames (25%% -> 12%%) and took 11%% less CPU per video than "
        "arrival order with the paper preset (BENCHMARKS.md, scoring). 'none': arrival order",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="float32 (default, exact) or mixed (float16 on GPU / bfloat16 on CPU)",
    )
    parser.add_argument(
        "--share_model",
        action="store_true",
        help="load one model per worker machine and share it across its SDK processes (GPU workers)",
    )
    parser.add_argument(
        "--model_copies", type=int, help="with sharing: model copies per machine (implies --share_model)"
    )
    segments = parser.add_argument_group(
        "segments (the YouTube-8M 2019 segment task; frame-level models only)",
        "With --segments every video's segments are scored too, in batched calls on the worker that scores "
        "the video, from the frames it already holds (no second read), and written to "
        "{output}_segments-SSSSS-of-NNNNN.parquet: id, start_time, top_classes, top_scores (and embedding). "
        "A 300-frame video has 60 segments of 5 frames. `python -m pipelines.segment_submission` turns them "
        "into the 2019 Kaggle submission file.",
    )
    segments.add_argument(
        "--segments", action="store_true", help="also score every segment of every video (see above)"
    )
    segments.add_argument(
        "--segment_length", type=int, default=SEGMENT_LENGTH, help="frames per segment (default 5, as rated)"
    )
    segments.add_argument(
        "--segment_stride",
        type=int,
        default=SEGMENT_STRIDE,
        help="frames between segment starts (default 5: the 2019 ratings start at multiples of 5)",
    )
    segments.add_argument("--segment_top_k", type=int, help="classes kept per segment (default: --top_k)")
    segments.add_argument(
        "--segment_classes",
        help="CSV of class ids (one per line; a header is skipped), e.g. the 2019 segment_label_ids.csv: "
        "each segment's top classes are chosen among these only (default: all of the model's classes)",
    )
    segments.add_argument(
        "--segment_embeddings", action="store_true", help="also write each segment's embedding"
    )
    segments.add_argument(
        "--segment_batch_size",
        type=int,
        default=DEFAULT_SEGMENT_BATCH,
        help=f"segments per model call (default {DEFAULT_SEGMENT_BATCH})",
    )
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="check everything and build the pipeline for the chosen runner (flags, options, model, input, "
        "output), print it, and exit without running: try a Dataflow command before it costs anything",
    )
    parser.add_argument(
        "--reshuffle",
        action="store_true",
        help="redistribute records after reading, for inputs with fewer files than worker cores (costs a "
        "shuffle of the raw records; on the DirectRunner it holds the whole input in memory)",
    )
    return parser


def _frame_counts(text: str) -> list[int]:
    """`--length_buckets`: "120,180" -> [120, 180]; "none" or "" -> [] (arrival order)."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of frame counts (e.g. 120,180,240,300) or 'none'"
        ) from None


def parse_known_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Splits the command line into this pipeline's arguments and Beam's.

    Args:
        argv: command-line arguments (without the program name); None reads `sys.argv`.

    Returns:
        `(known, beam_args)`: the parsed scoring arguments and the remaining flags for `PipelineOptions`.
    """
    return _parser().parse_known_args(argv)


def _fail(message: str) -> None:
    raise ScoreSetupError(message)


def _require_arguments(args: argparse.Namespace) -> None:
    """--input, --model and --output are all needed: a default model or corpus would score something the
    user did not ask for and make it look like a result."""
    missing = [f"--{name}" for name in ("input", "model", "output") if getattr(args, name) is None]
    if missing:
        _fail(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: pass --input "
            "'PATTERN.tfrecord' --model MODEL_DIR --output PREFIX (to try it first, `make demo` scores its "
            "synthetic corpus and prints the command it ran)"
        )


def _check_arguments(args: argparse.Namespace) -> None:
    for flag, why in (
        ("max_frames", "the model applies its own frame limit (trainer.train --max_frames)"),
        ("pca_eigenvals", "the model stores its reverse whitening (trainer.train --pca_eigenvals)"),
    ):
        if getattr(args, flag) is not None:
            _fail(
                f"--{flag} is no longer a scoring flag: {why}. Drop it; a model saved before this change is "
                "refused with the command that re-exports it"
            )
    if args.length_buckets is not None and any(b < 1 for b in args.length_buckets):
        _fail(f"--length_buckets={args.length_buckets}: every boundary must be a positive frame count")
    for name, minimum in (("top_k", 1), ("batch_size", 1), ("num_shards", 0)):
        if getattr(args, name) is not None and getattr(args, name) < minimum:
            _fail(f"--{name}={getattr(args, name)} must be >= {minimum}")
    if args.model_copies is not None and args.model_copies < 1:
        _fail(f"--model_copies={args.model_copies} must be >= 1")
    args.output_format = list(dict.fromkeys(args.output_format))
    if "bigquery" in args.output_format:
        if not args.bigquery_table:
            _fail("--output_format bigquery needs --bigquery_table PROJECT:DATASET.TABLE")
        from pipelines.bigquery import parse_table_spec

        try:
            parse_table_spec(args.bigquery_table)
        except ValueError as e:
            _fail(f"--bigquery_table: {e}")
    elif args.bigquery_table:
        _fail(
            "--bigquery_table is set but --output_format does not include bigquery; "
            "add --output_format bigquery"
        )
    _check_segment_arguments(args)
    if args.output.endswith(("/", "\\")):
        _fail(
            f"--output={args.output!r} is a directory; pass a file prefix inside it, e.g. {args.output}scores"
        )


def _check_segment_arguments(args: argparse.Namespace) -> None:
    defaults = {
        "segment_length": SEGMENT_LENGTH,
        "segment_stride": SEGMENT_STRIDE,
        "segment_top_k": None,
        "segment_classes": None,
        "segment_embeddings": False,
        "segment_batch_size": DEFAULT_SEGMENT_BATCH,
    }
    if not args.segments:
        given = [f"--{name}" for name, default in defaults.items() if getattr(args, name) != default]
        if given:
            _fail(f"{', '.join(given)} set without --segments; add --segments to score segments")
        return
    for name in ("segment_length", "segment_stride", "segment_batch_size", "segment_top_k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            _fail(f"--{name}={value} must be >= 1")
    if args.segment_classes is not None:
        from nextvlad.segments import read_class_ids

        try:
            args.segment_class_ids = tuple(read_class_ids(args.segment_classes))
        except (OSError, ValueError) as e:
            _fail(f"--segment_classes: {e}")


def _check_model(args: argparse.Namespace) -> ModelInfo:
    info = inspect_model(args.model)
    if args.input_format is None:
        args.input_format = info.input_format
    elif args.input_format != info.input_format:
        inputs = "rgb, audio, num_frames" if info.input_format == "frame" else "mean_rgb, mean_audio"
        _fail(
            f"--input_format={args.input_format} but the model {info.path} takes {info.input_format}-level "
            f"inputs ({inputs}); pass --input_format {info.input_format} (or leave it out), or a model "
            f"trained on {args.input_format}-level data"
        )
    if args.top_k is None:
        args.top_k = min(DEFAULT_TOP_K, info.num_classes)
    elif args.top_k > info.num_classes:
        _fail(
            f"--top_k={args.top_k} is larger than the model's {info.num_classes} classes; pass --top_k "
            f"{info.num_classes} or less"
        )
    if args.segments:
        _check_segment_model(args, info)
    return info


def _check_segment_model(args: argparse.Namespace, info: ModelInfo) -> None:
    if info.input_format != "frame":
        _fail(
            f"--segments needs a frame-level model and records (a segment is a window of frames); the model "
            f"{info.path} takes video-level inputs"
        )
    classes = getattr(args, "segment_class_ids", ())
    outside = [c for c in classes if c >= info.num_classes]
    if outside:
        _fail(
            f"--segment_classes {args.segment_classes} names classes {outside[:5]} outside the model's "
            f"{info.num_classes}; pass the class list of this model's vocabulary"
        )
    choices = len(classes) or info.num_classes
    if args.segment_top_k is None:
        args.segment_top_k = min(args.top_k, choices)
    elif args.segment_top_k > choices:
        _fail(f"--segment_top_k={args.segment_top_k} is more than the {choices} classes to choose from")


def _check_input(args: argparse.Namespace, info: ModelInfo) -> None:
    if "://" not in args.input and os.path.isdir(args.input):
        _fail(
            f"--input {args.input!r} is a directory; pass a glob of its files, e.g. '{args.input}/*.tfrecord'"
        )
    try:
        files = FileSystems.match([args.input])[0].metadata_list
    except Exception as e:  # e.g. a bucket that does not exist
        raise ScoreSetupError(f"Cannot list --input {args.input!r}: {e}") from e
    if not files:
        _fail(f"--input {args.input!r} matches no files; check the path (local or gs://) and the glob")
    # The first record tells whether the data is frame or video level; a mismatch would otherwise send
    # every record to the dead letter.
    first_file = sorted(f.path for f in files)[0]
    first = next(read_tfrecord_file(first_file), None)
    if not isinstance(first, Record):
        return  # empty or corrupt: the pipeline reports it
    try:
        layout = check_first_record(first.data, info, source=first_file)
    except ValueError as e:
        _fail(str(e))
    logger.info(
        "records: %s-level, %s (first record of %s)",
        args.input_format,
        describe_id_layout(layout),
        first_file,
    )


def _check_output(output: str, *, overwrite: bool) -> None:
    probe = f"{output}-write-check-{uuid.uuid4().hex}.tmp"
    try:
        with FileSystems.create(probe) as f:
            f.write(b"")
        FileSystems.delete([probe])
    except Exception as e:
        raise ScoreSetupError(
            f"Cannot write to the output location {output!r} ({type(e).__name__}: {e}); pass an "
            "--output prefix in a directory or bucket you can write to"
        ) from e
    from pipelines import output_files

    existing = output_files.find_existing(output)
    if existing.shards and not overwrite:
        _refuse_earlier_run(output, existing.shards)
    if existing.foreign:
        logger.warning(
            "%d file(s) match %s-*.parquet without being this job's shards (%s): they are left alone, and "
            "a reader of that glob reads them too",
            len(existing.foreign),
            output,
            _some(existing.foreign),
        )


def _some(paths: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _refuse_earlier_run(output: str, shards: Sequence[str]) -> None:
    _fail(
        f"--output {output!r} already holds the output of an earlier run ({len(shards)} files: "
        f"{_some(shards)}); scoring into it would leave two runs mixed for readers of "
        f"'{output}-*.parquet'. Pass --overwrite to replace that run, or choose a new --output prefix"
    )


def _clear_output(output: str, *, overwrite: bool, dry_run: bool) -> None:
    """Right before the pipeline starts (every check passed): deletes what a killed run left and, with
    --overwrite, the earlier run's shards, so that the prefix ends up holding this run's files only.

    The earlier run goes before the new one starts rather than when it finishes: a new run killed while
    renaming its files into place then leaves part of one run (refused next time), never two runs mixed.
    """
    from pipelines import output_files

    existing = output_files.find_existing(output)
    if existing.shards and not overwrite:
        _refuse_earlier_run(output, existing.shards)  # written there since the check
    if dry_run:
        if existing.shards:
            logger.info("dry run: --overwrite would delete %s", _some(existing.shards))
        return
    if existing.leftovers:
        logger.warning(
            "deleting the temporary files of an interrupted run at %s: %s", output, _some(existing.leftovers)
        )
    if existing.shards:
        logger.info(
            "--overwrite: deleting the earlier run's %d files at %s: %s",
            len(existing.shards),
            output,
            _some(existing.shards),
        )
    output_files.remove(output, existing, shards=overwrite)


def build_pipeline(
    pipeline: beam.Pipeline,
    args: argparse.Namespace,
    info: ModelInfo,
    *,
    model_version: str,
    bigquery_test_client: Any = None,
) -> None:
    """Adds the scoring transforms to `pipeline` (arguments already checked by `run`).

    Args:
        pipeline: the pipeline to extend.
        args: parsed arguments (see `parse_known_args`), with defaults resolved.
        info: the model, from `pipelines.handler.inspect_model`.
        model_version: written into every row.
        bigquery_test_client: a Beam BigQuery client to use instead of the default (tests).
    """
    level = args.input_format.capitalize()
    read = pipeline | f"Read{level}Records" >> ReadRecords(
        args.input, skip_corrupt_files=args.skip_corrupt_files
    )
    records = read.records
    if args.reshuffle:
        records = records | "ReshuffleRecords" >> beam.Reshuffle()
    parsed = records | "ParseRecords" >> ParseRecords(
        input_format=args.input_format,
        num_classes=info.num_classes,
        max_frames=info.max_frames,
    )
    handler = NeXtVLADModelHandler(
        info.path,
        input_format=args.input_format,
        batch_size=args.batch_size,
        precision=args.precision,
        share_model_across_processes=args.share_model or args.model_copies is not None,
        model_copies=args.model_copies,
        pad_lengths=args.length_buckets or (),
        segments=_segment_options(args),
    )
    examples = parsed.examples
    if args.length_buckets:
        examples = examples | "BucketByLength" >> BucketByLength(
            args.length_buckets, batch_size=args.batch_size
        )
    scored = examples | "RunInference" >> RunInference(handler)
    rows = scored | "FormatRows" >> FormatRows(
        top_k=args.top_k, model_version=model_version, embedding_size=info.embedding_size
    )
    if args.segments:
        _write_segments(scored, args, info, bigquery_test_client=bigquery_test_client)
    if "parquet" in args.output_format:
        rows | "WriteParquet" >> WriteParquet(
            args.output, embedding_size=info.embedding_size, num_shards=args.num_shards
        )
    if "bigquery" in args.output_format:
        from pipelines.bigquery import WriteRowsToBigQuery

        (
            rows
            | "RowDicts" >> RowDicts()
            | "WriteBigQuery"
            >> WriteRowsToBigQuery(
                args.bigquery_table,
                method=args.bigquery_method,
                custom_gcs_temp_location=args.bigquery_temp_location,
                test_client=bigquery_test_client,
            )
        )
    (
        (read[DEAD_LETTER], parsed[DEAD_LETTER])
        | "CollectDeadLetters" >> beam.Flatten()
        | "WriteDeadLetter" >> WriteDeadLetter(args.output)
    )


def _segment_options(args: argparse.Namespace) -> SegmentOptions | None:
    if not args.segments:
        return None
    return SegmentOptions(
        length=args.segment_length,
        stride=args.segment_stride,
        top_k=args.segment_top_k,
        classes=getattr(args, "segment_class_ids", ()),
        embeddings=args.segment_embeddings,
        batch_size=args.segment_batch_size,
    )


def _write_segments(
    scored: beam.PCollection, args: argparse.Namespace, info: ModelInfo, *, bigquery_test_client: Any
) -> None:
    """Segment rows to `{output}_segments-*.parquet` and, with BigQuery, to the table `{TABLE}_segments`."""
    embedding_size = info.embedding_size if args.segment_embeddings else None
    rows = scored | "FormatSegmentRows" >> FormatSegmentRows(embedding_size=embedding_size)
    if "parquet" in args.output_format:
        rows | "WriteSegmentParquet" >> WriteParquet(
            f"{args.output}{SEGMENTS_INFIX}",
            embedding_size=info.embedding_size,
            schema=segment_schema(embedding_size),
            num_shards=args.num_shards,
        )
    if "bigquery" in args.output_format:
        from pipelines.bigquery import WriteRowsToBigQuery, segments_table

        (
            rows
            | "SegmentRowDicts" >> RowDicts()
            | "WriteSegmentBigQuery"
            >> WriteRowsToBigQuery(
                segments_table(args.bigquery_table),
                method=args.bigquery_method,
                custom_gcs_temp_location=args.bigquery_temp_location,
                test_client=bigquery_test_client,
                segments=True,
            )
        )


def _counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


def _check_beam_options(options: PipelineOptions) -> None:
    """Fails on flags no Beam option knows (Beam itself only warns and drops them) and on options the
    chosen runner rejects (e.g. Dataflow without --project or with a local --temp_location)."""
    # With retain_unknown_options, flags no option class declares come back as extra keys.
    unknown = sorted(
        set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    )
    if unknown:
        raise ScoreSetupError(
            f"unknown flag(s) {', '.join('--' + name for name in unknown)}: neither pipelines.score nor Beam "
            "knows them (a typo?); see `python -m pipelines.score --help` and Beam's pipeline options"
        )
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.runner import create_runner

    runner_name = options.view_as(StandardOptions).runner or "DirectRunner"
    errors = PipelineOptionsValidator(options, create_runner(runner_name)).validate()
    if errors:
        raise ScoreSetupError(f"{runner_name} rejects the pipeline options: " + "; ".join(errors))


def _describe_dry_run(pipeline: beam.Pipeline, options: PipelineOptions, model_version: str) -> ScoreSummary:
    """Prints the checked options and the transform graph instead of running it."""
    proto = pipeline.to_runner_api()
    labels = sorted(
        t.unique_name for t in proto.components.transforms.values() if t.unique_name.count("/") == 0
    )
    print("dry run: every check passed; nothing was submitted")
    print(f"  model_version: {model_version}")
    print(f"  top-level transforms: {', '.join(labels)}")
    for name, value in sorted(options.get_all_options(drop_default=True).items()):
        print(f"  --{name}={value}")
    return ScoreSummary(
        records_read=0, videos_scored=0, dead_letters={}, batches=0, seconds=0.0, output="", dry_run=True
    )


def run(
    argv: Sequence[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    *,
    bigquery_test_client: Any = None,
) -> ScoreSummary:
    """Checks the arguments, builds and runs the scoring pipeline, and waits for it to finish.

    Args:
        argv: command-line arguments (see `python -m pipelines.score --help`); unknown flags go to Beam.
        test_pipeline: a pipeline to build into instead of a new one (e.g. a `TestPipeline`).
        bigquery_test_client: a Beam apitools BigQuery client for `--output_format bigquery` (tests point it
            at an emulator).

    Returns:
        The run's counts and speed.

    Raises:
        ScoreSetupError, InvalidModelError: the configuration is unusable (raised before any scoring).
        Exception: the pipeline failed (e.g. a corrupt input file without --skip_corrupt_files).
    """
    args, beam_args = parse_known_args(argv)
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    enable_gpu_memory_growth()  # before the check below makes TensorFlow initialise the GPU
    _require_arguments(args)
    _check_arguments(args)
    info = _check_model(args)
    _check_input(args, info)
    _check_output(args.output, overwrite=args.overwrite)
    model_version = args.model_version or default_model_version(args.model, info.path)
    logger.info(
        "scoring %s with %s (%s, %s level, %d classes, embedding %d) -> %s (%s)",
        args.input,
        info.path,
        model_version,
        args.input_format,
        info.num_classes,
        info.embedding_size,
        args.output,
        ", ".join(args.output_format),
    )

    if args.dry_run:
        _check_beam_options(options)
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_pipeline(
        pipeline,
        args,
        info,
        model_version=model_version,
        bigquery_test_client=bigquery_test_client,
    )
    _clear_output(args.output, overwrite=args.overwrite, dry_run=args.dry_run)
    if args.dry_run:
        return _describe_dry_run(pipeline, options, model_version)
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    counters = _counters(result)
    prefix = "dead_letters_"
    return ScoreSummary(
        records_read=counters.get("records_read", 0),
        videos_scored=counters.get("videos_scored", 0),
        dead_letters={k[len(prefix) :]: v for k, v in counters.items() if k.startswith(prefix) and v},
        batches=counters.get("batches", 0),
        seconds=seconds,
        output=args.output,
        labels_outside_vocabulary=counters.get("labels_outside_vocabulary", 0),
        segments_scored=counters.get("segments_scored", 0),
        video_model_seconds=counters.get("video_model_msecs", 0) / 1e3,
        segment_model_seconds=counters.get("segment_model_msecs", 0) / 1e3,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: runs the job and prints the one-line summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Beam narrates every fused stage at INFO; keep its warnings and errors only.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        summary = run(argv)
    except (ScoreSetupError, InvalidModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not summary.dry_run:
        print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
