"""The flags of `python -m pipelines.score`, and the checks that run on them before anything is scored.

`parse_known_args` splits a command line into the scoring arguments and Beam's; `check_arguments` then
checks them against each other, the model and the input, fills in the defaults that depend on the model
(`--input_format`, `--top_k`, `--segment_top_k`), and raises `ScoreSetupError` with a message saying
what to pass instead. The rules for the `--output` prefix are in `pipelines.score_output`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from nextvlad.segments import SEGMENT_LENGTH, SEGMENT_STRIDE
from nextvlad.serving import check_first_record, describe_id_layout
from pipelines.handler import PRECISIONS, ModelInfo, inspect_model
from pipelines.transforms import Record, read_tfrecord_file

logger = logging.getLogger(__name__)

# The first line of the docstring of pipelines.score: --help starts with it.
DESCRIPTION = (
    "Score YouTube-8M videos with a trained NeXtVLAD model: one row per video (embedding + top-k labels)."
)
OUTPUT_FORMATS = ("parquet", "bigquery")
DEFAULT_TOP_K = 20
DEFAULT_SEGMENT_BATCH = 512  # segments per model call with --segments
# Length-bucket boundaries in frames: most YouTube-8M videos have 120-300 (one per second, at most 300).
DEFAULT_LENGTH_BUCKETS = (120, 180, 240, 300)


class ScoreSetupError(ValueError):
    """The job cannot start as configured; the message names the bad value and what to pass instead."""


def _parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: an abbreviation must not swallow one of Beam's flags.
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.score",
        description=DESCRIPTION,
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


def check_arguments(args: argparse.Namespace) -> ModelInfo:
    """Checks the scoring arguments, the model and the input before anything runs.

    Fills in the defaults that depend on the model (`input_format`, `top_k`, `segment_top_k`) and the
    class ids of `--segment_classes` (`segment_class_ids`) in `args`.

    Args:
        args: from `parse_known_args`.

    Returns:
        The model, from `pipelines.handler.inspect_model`.

    Raises:
        ScoreSetupError, InvalidModelError: the configuration is unusable.
    """
    _require_arguments(args)
    _check_values(args)
    info = _check_model(args)
    _check_input(args, info)
    return info


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


def _check_values(args: argparse.Namespace) -> None:
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
