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

This module runs the job and prints its summary; the flags and those checks are in
`pipelines.score_arguments`, the `--output` rules in `pipelines.score_output`, and the transforms in
`pipelines.score_pipeline`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.handler import InvalidModelError, default_model_version, enable_gpu_memory_growth
from pipelines.score_arguments import ScoreSetupError, check_arguments, parse_known_args
from pipelines.score_output import check_output, clear_output
from pipelines.score_pipeline import build_pipeline
from pipelines.transforms import METRICS_NAMESPACE

logger = logging.getLogger(__name__)

# `run` raises ScoreSetupError and splits its argv with parse_known_args: callers find both here.
__all__ = ["ScoreSetupError", "ScoreSummary", "main", "parse_known_args", "run"]


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
    info = check_arguments(args)
    check_output(args.output, overwrite=args.overwrite)
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
    clear_output(args.output, overwrite=args.overwrite, dry_run=args.dry_run)
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
