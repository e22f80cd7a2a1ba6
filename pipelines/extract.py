"""Extract YouTube-8M frame features from video files: decode at 1 frame/s → backbone → PCA → uint8 records.

    python -m pipelines.extract --runner=DirectRunner --input 'videos/*.mp4' --output features/part \\
        --pca_dir yt8m_pca [--labels labels.csv] [--backbone inception_v3] [--max_frames 300] \\
        [--vggish_checkpoint vggish_model.ckpt --vggish_pca vggish_pca_params.npz]

writes `features/part-SSSSS-of-NNNNN.tfrecord` (frame-level SequenceExamples, exactly the dataset's format:
`trainer.train` and `pipelines.score` read them with no flag), the dead letter
`features/part-errors-SSSSS-of-NNNNN.jsonl` (one line per file that could not be extracted: file, id,
reason, message), `features/part-metadata.json` (backbone, weights, PCA, audio, counts) and prints a
one-line summary. `--fit_pca N` first learns the PCA from about N frames of the corpus and writes it to
`features/part-pca/` (pass that folder as `--pca_dir` to later runs). Every flag this module does not
define goes to Beam's `PipelineOptions`, so the same command runs on Dataflow.

Pipeline: ListVideos → DecodeVideos → RunInference(FrameFeaturesHandler) → ToRecords → WriteTFRecords;
duplicate ids and bad files → WriteDeadLetter. `records + dead letters == files matched`, always.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import json
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

from nextvlad.extraction.backbone import DEFAULT_BACKBONE, PRECISIONS, Backbone, BackboneError, BackboneSpec
from nextvlad.extraction.pca import DATASET_PCA_URL, PCAError, load_pca_dir
from nextvlad.extraction.vggish import CHECKPOINT_URL, PCA_PARAMS_URL, VGGishError, VGGishPCA
from nextvlad.files import read_text, write_bytes
from nextvlad.records import MAX_FRAMES, RGB_SIZE
from pipelines import output_files
from pipelines.extract_transforms import (
    DecodeVideos,
    FrameFeaturesHandler,
    ListVideos,
    ToRecords,
    frames_per_video,
    sample_videos,
    spaced_rows,
)
from pipelines.transforms import DEAD_LETTER, METRICS_NAMESPACE, WriteDeadLetter

logger = logging.getLogger(__name__)

FAMILIES = (("", ".tfrecord"), ("-errors", ".jsonl"))  # the files one run owns under --output


class ExtractSetupError(ValueError):
    """The job cannot start as configured; the message names the bad value and what to pass instead."""


@dataclasses.dataclass(frozen=True)
class ExtractSummary:
    """Counts and speed of one extraction run, from the pipeline's metrics."""

    files_matched: int
    videos_extracted: int
    frames: int
    video_seconds: float
    without_audio: int
    dead_letters: dict[str, int]
    seconds: float  # wall time of the extraction pass (a --fit_pca pass not included)
    output: str

    @property
    def num_dead_letters(self) -> int:
        return sum(self.dead_letters.values())

    def line(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dead_letters.items()))
        dead = f"{self.num_dead_letters} dead letters ({reasons})" if reasons else "0 dead letters"
        rate = self.videos_extracted / self.seconds if self.seconds > 0 else 0.0
        return (
            f"Extracted {self.videos_extracted} of {self.files_matched} videos ({self.frames} frames, "
            f"{self.video_seconds:.0f} s of video, {self.without_audio} without audio); {dead}; "
            f"{self.seconds:.1f}s ({rate:.2f} videos/s); output {self.output}-*.tfrecord"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.extract",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Every other flag (e.g. --runner, --project, --direct_num_workers) goes to Beam.",
    )
    parser.add_argument(
        "--input", required=True, help="video file glob, local or gs:// (e.g. 'videos/*.mp4')"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output prefix, local or gs:// (e.g. features/part); a prefix holding an earlier run's records "
        "is refused unless --overwrite is given",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the earlier run at --output")
    parser.add_argument(
        "--labels",
        help="CSV with a header 'path_or_stem,label_ids[,id]': label ids separated by spaces; the first "
        "column matches a file's path, name or stem; id (optional) replaces the default id, the file's stem",
    )
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="inception_v3 (default; 2048-d, as the dataset), a .keras image model, or a keras-hub preset",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (default: Keras downloads and caches them), none (seeded random weights: offline "
        "tests and demos only), or a local weights file",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --weights none (default 0)")
    parser.add_argument(
        "--image_size", type=int, help="square frame size fed to the backbone (default: its own)"
    )
    pca = parser.add_mutually_exclusive_group(required=True)
    pca.add_argument(
        "--pca_dir",
        help=f"folder with mean.npy, eigenvecs.npy, eigenvals.npy: the dataset's yt8m_pca "
        f"({DATASET_PCA_URL}) for inception_v3 with ImageNet weights, or one --fit_pca wrote",
    )
    pca.add_argument(
        "--fit_pca",
        type=int,
        metavar="N",
        help="learn the PCA from about N frames of these videos first (tensorflow-transform), write it to "
        "OUTPUT-pca/ and use it",
    )
    parser.add_argument(
        "--max_frames", type=int, default=MAX_FRAMES, help=f"seconds kept per video (default {MAX_FRAMES})"
    )
    parser.add_argument(
        "--vggish_checkpoint", help=f"VGGish weights ({CHECKPOINT_URL}); without it audio features are zeros"
    )
    parser.add_argument(
        "--vggish_pca", help=f"VGGish PCA parameters ({PCA_PARAMS_URL}); with --vggish_checkpoint"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="float32 (default) or mixed (fp16 GPU / bf16 CPU)",
    )
    parser.add_argument("--chunk", type=int, default=32, help="frames per network call (default 32)")
    parser.add_argument(
        "--frames_per_batch",
        type=int,
        default=256,
        help="frames collected across videos before the networks run (default 256)",
    )
    parser.add_argument(
        "--decode_threads", type=int, default=0, help="decoder threads (default 0: one per core)"
    )
    parser.add_argument(
        "--share_model", action="store_true", help="one copy of the networks per worker (GPUs)"
    )
    parser.add_argument(
        "--num_shards", type=int, default=0, help="record files; 0 (default) lets the runner decide"
    )
    return parser


def parse_known_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Splits the command line into this pipeline's arguments and Beam's."""
    return _parser().parse_known_args(argv)


def _fail(message: str) -> None:
    raise ExtractSetupError(message)


def parse_labels_csv(text: str, *, source: str = "labels") -> dict[str, tuple[tuple[int, ...], str | None]]:
    """`{path | name | stem: (label ids, id or None)}` from a `path_or_stem,label_ids[,id]` CSV.

    Raises:
        ExtractSetupError: a bad header, a label that is not a non-negative integer, or a key given twice.
    """
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0][:2]] != ["path_or_stem", "label_ids"]:
        _fail(f"{source}: the first line must be the header 'path_or_stem,label_ids' (optionally ',id')")
    has_id = len(rows[0]) > 2 and rows[0][2].strip() == "id"
    out: dict[str, tuple[tuple[int, ...], str | None]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        key = row[0].strip()
        text_ids = row[1].replace(";", " ").split() if len(row) > 1 else []
        try:
            ids = tuple(int(v) for v in text_ids)
        except ValueError:
            _fail(f"{source} line {line}: label_ids {row[1]!r} must be integers separated by spaces")
        if any(v < 0 for v in ids):
            _fail(f"{source} line {line}: label ids must be >= 0, got {list(ids)}")
        if key in out:
            _fail(f"{source} line {line}: {key!r} is listed twice")
        video_id = row[2].strip() if has_id and len(row) > 2 and row[2].strip() else None
        out[key] = (ids, video_id)
    return out


def _check_arguments(args: argparse.Namespace) -> None:
    for name, minimum in (("max_frames", 1), ("chunk", 1), ("frames_per_batch", 1), ("num_shards", 0)):
        if getattr(args, name) < minimum:
            _fail(f"--{name}={getattr(args, name)} must be >= {minimum}")
    if args.decode_threads < 0:
        _fail(f"--decode_threads={args.decode_threads} must be >= 0 (0: one per core)")
    if args.fit_pca is not None and args.fit_pca < 2:
        _fail(f"--fit_pca={args.fit_pca}: a PCA needs frames to learn from; pass e.g. --fit_pca 10000")
    if bool(args.vggish_checkpoint) != bool(args.vggish_pca):
        _fail(
            "--vggish_checkpoint and --vggish_pca go together: pass both (vggish_model.ckpt and "
            "vggish_pca_params.npz from the VGGish release) or neither (zero audio features)"
        )
    if args.output.endswith(("/", "\\")):
        _fail(
            f"--output={args.output!r} is a directory; pass a file prefix inside it, e.g. {args.output}part"
        )


def _check_input(args: argparse.Namespace) -> int:
    if "://" not in args.input and os.path.isdir(args.input):
        _fail(f"--input {args.input!r} is a directory; pass a glob of its files, e.g. '{args.input}/*.mp4'")
    try:
        files = FileSystems.match([args.input])[0].metadata_list
    except Exception as e:
        raise ExtractSetupError(f"cannot list --input {args.input!r}: {e}") from e
    if not files:
        _fail(f"--input {args.input!r} matches no files; check the path (local or gs://) and the glob")
    return len(files)


def _check_output(args: argparse.Namespace) -> None:
    probe = f"{args.output}-write-check-{uuid.uuid4().hex}.tmp"
    try:
        write_bytes(probe, b"")
        FileSystems.delete([probe])
    except Exception as e:
        raise ExtractSetupError(
            f"cannot write to the output location {args.output!r} ({type(e).__name__}: {e}); pass an "
            "--output prefix in a folder or bucket you can write to"
        ) from e
    existing = output_files.find_existing(args.output, families=FAMILIES)
    if existing.shards and not args.overwrite:
        _fail(
            f"--output {args.output!r} already holds an earlier run ({len(existing.shards)} files, e.g. "
            f"{existing.shards[0]}); pass --overwrite to replace it, or choose a new --output prefix"
        )
    pca_out = f"{args.output}-pca"
    if args.fit_pca is not None and FileSystems.exists(f"{pca_out}/mean.npy") and not args.overwrite:
        _fail(
            f"{pca_out}/ already holds a fitted PCA: pass --pca_dir {pca_out} to reuse it, or --overwrite to "
            "fit it again"
        )


def _check_models(args: argparse.Namespace, spec: BackboneSpec) -> Backbone:
    """Builds the backbone once here, so that a bad name, missing weights or an unfit PCA fail now."""
    try:
        backbone = Backbone(spec, chunk_size=args.chunk)
    except BackboneError as e:
        _fail(str(e))
    if backbone.feature_dim < RGB_SIZE:
        _fail(
            f"--backbone {spec.name} gives {backbone.feature_dim}-d features; the records hold {RGB_SIZE} "
            "PCA components per frame, so the backbone needs at least that many features"
        )
    if args.pca_dir:
        try:
            load_pca_dir(args.pca_dir, feature_dim=backbone.feature_dim)
        except PCAError as e:
            _fail(f"--pca_dir: {e}")
    if args.vggish_checkpoint:
        from nextvlad.extraction.vggish import load_vggish

        try:
            load_vggish(args.vggish_checkpoint)
            VGGishPCA(args.vggish_pca)
        except VGGishError as e:
            _fail(str(e))
    else:
        logger.warning(
            "no --vggish_checkpoint: every audio feature is written as zeros, as the dataset's extractor "
            "does without an audio model (download %s and %s for real audio features)",
            CHECKPOINT_URL,
            PCA_PARAMS_URL,
        )
    return backbone


def _counters(result: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def _handler(args: argparse.Namespace, spec: BackboneSpec, *, audio: bool = True) -> FrameFeaturesHandler:
    return FrameFeaturesHandler(
        spec,
        vggish_checkpoint=args.vggish_checkpoint if audio else None,
        precision=args.precision,
        chunk=args.chunk,
        frames_per_batch=args.frames_per_batch,
        share_model_across_processes=args.share_model,
    )


def _run_fit(
    args: argparse.Namespace,
    spec: BackboneSpec,
    backbone: Backbone,
    options: PipelineOptions,
    labels,
    num_files: int,
) -> str:
    """The --fit_pca pass: returns the folder it wrote."""
    from pipelines.extract_pca import fit_pca, sampled_videos

    pca_dir = f"{args.output}-pca"
    num_videos = sampled_videos(args.fit_pca, num_files)
    per_video = frames_per_video(args.fit_pca, num_videos)
    logger.info(
        "--fit_pca %d: learning the PCA from %d videos (up to %d frames each) into %s",
        args.fit_pca,
        num_videos,
        per_video,
        pca_dir,
    )
    started = time.perf_counter()
    with beam.Pipeline(options=options) as pipeline:
        listed = pipeline | "ListVideos" >> ListVideos(args.input, labels=labels)
        decoded = sample_videos(listed.videos, num_videos) | "DecodeVideos" >> DecodeVideos(
            image_size=backbone.image_size,
            max_frames=args.max_frames,
            with_audio=False,
            threads=args.decode_threads,
        )
        features = (
            decoded.videos
            | "RunInference" >> RunInference(_handler(args, spec, audio=False))
            | "SampleFrames" >> beam.FlatMap(lambda video: list(spaced_rows(video["rgb"], per_video)))
        )
        fit_pca(pipeline, features, feature_dim=backbone.feature_dim, dim=RGB_SIZE, output_dir=pca_dir)
    logger.info("fitted the PCA in %.1fs: %s", time.perf_counter() - started, pca_dir)
    return pca_dir


def build_pipeline(
    pipeline: beam.Pipeline, args: argparse.Namespace, spec: BackboneSpec, backbone: Backbone, labels
) -> None:
    """Adds the extraction transforms to `pipeline` (arguments already checked by `run`)."""
    listed = pipeline | "ListVideos" >> ListVideos(args.input, labels=labels)
    decoded = listed.videos | "DecodeVideos" >> DecodeVideos(
        image_size=backbone.image_size,
        max_frames=args.max_frames,
        with_audio=bool(args.vggish_checkpoint),
        threads=args.decode_threads,
    )
    (
        decoded.videos
        | "RunInference" >> RunInference(_handler(args, spec))
        | "ToRecords"
        >> ToRecords(pca_dir=args.pca_dir, feature_dim=backbone.feature_dim, vggish_pca=args.vggish_pca)
        | "WriteTFRecords"
        >> beam.io.WriteToTFRecord(args.output, file_name_suffix=".tfrecord", num_shards=args.num_shards)
    )
    (
        (listed[DEAD_LETTER], decoded[DEAD_LETTER])
        | "CollectDeadLetters" >> beam.Flatten()
        | "WriteDeadLetter" >> WriteDeadLetter(args.output)
    )


def _write_metadata(
    args: argparse.Namespace, spec: BackboneSpec, backbone: Backbone, summary: ExtractSummary
) -> str:
    path = f"{args.output}-metadata.json"
    metadata = {
        **spec.describe(),
        "image_size": list(backbone.image_size),
        "feature_dim": backbone.feature_dim,
        "pca_dir": args.pca_dir,
        "pca_fitted_on_frames": args.fit_pca,
        "audio": (
            f"VGGish ({args.vggish_checkpoint}, PCA {args.vggish_pca})"
            if args.vggish_checkpoint
            else "zeros: no VGGish checkpoint given"
        ),
        "max_frames": args.max_frames,
        "precision": args.precision,
        "files_matched": summary.files_matched,
        "videos_extracted": summary.videos_extracted,
        "frames": summary.frames,
        "dead_letters": summary.dead_letters,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_bytes(path, (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode())
    return path


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> ExtractSummary:
    """Checks the arguments, (fits the PCA,) runs the extraction and returns its counts.

    Raises:
        ExtractSetupError: the configuration is unusable (raised before any video is decoded).
    """
    args, beam_args = parse_known_args(argv)
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    _check_arguments(args)
    labels = parse_labels_csv(read_text(args.labels), source=args.labels) if args.labels else {}
    num_files = _check_input(args)
    _check_output(args)
    spec = BackboneSpec(name=args.backbone, weights=args.weights, seed=args.seed, image_size=args.image_size)
    backbone = _check_models(args, spec)
    existing = output_files.find_existing(args.output, families=FAMILIES)
    output_files.remove(args.output, existing, shards=args.overwrite)
    if args.fit_pca is not None:
        args.pca_dir = _run_fit(args, spec, backbone, options, labels, num_files)
    logger.info(
        "extracting %s -> %s-*.tfrecord (%s, PCA %s)", args.input, args.output, spec.name, args.pca_dir
    )
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build_pipeline(pipeline, args, spec, backbone, labels)
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    counters = _counters(result)
    prefix = "dead_letters_"
    summary = ExtractSummary(
        files_matched=counters.get("files_matched", 0),
        videos_extracted=counters.get("videos_extracted", 0),
        frames=counters.get("frames_written", 0),
        video_seconds=counters.get("video_milliseconds", 0) / 1000.0,
        without_audio=counters.get("videos_without_audio", 0),
        dead_letters={k[len(prefix) :]: v for k, v in counters.items() if k.startswith(prefix) and v},
        seconds=time.perf_counter() - started,
        output=args.output,
    )
    _write_metadata(args, spec, backbone, summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: runs the job and prints the one-line summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        summary = run(argv)
    except ExtractSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
