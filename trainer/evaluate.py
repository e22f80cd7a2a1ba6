"""Evaluate a trained NeXtVLAD model on YouTube-8M TFRecords: metrics, per-class AP, plots, submission.

Run (a model trained by `trainer.train` on video-level data, evaluated on the held-out files):

    python -m trainer.evaluate --model runs/video \\
        --data '../shared/data/yt8m-2018-video-level/validate01[0-2][0-9].tfrecord' \\
        --label_names ../shared/data/label_names_2018.csv --submission runs/video/submission.csv

It prints GAP@20, Hit@1, PERR, mAP and the number of videos, and writes, by default beside the model
(`--output` moves all three; the CSV and PNG are named after the JSON):

- `eval_metrics.json`: the metrics and what was evaluated (not `metrics.json`, which is the trainer's
  own final evaluation and is left alone);
- `eval_metrics_per_class.csv`: `class_id[,name],positives,top_k_count,ap` for every class;
- `eval_metrics.png`: AP against class frequency, and the precision/recall curve behind GAP@k.

`--submission` also writes the 2018 Kaggle CSV (`VideoId,LabelConfidencePairs`, top 20 as `"%i %g"`).

`--segments` evaluates the 2019 segment task instead, on records with segment ratings (the 2019
validation set, or `python -m nextvlad.synthetic --segments`):

    python -m trainer.evaluate --model runs/segments --data 'segments/validate*.tfrecord' --segments

prints segment mAP@100000 (`segment_map` in the JSON, the starter code's definition: see
`trainer.segment_evaluation`) and writes `segment_eval_metrics.json` and
`segment_eval_metrics_per_class.csv` (`class_id[,name],rated_segments,positives,ap`) beside the model.
`--segments_from video` scores each segment with its video's prediction instead, the baseline a segment
model must beat.

Records are read with the same parser as scoring (`nextvlad.records`), so evaluation runs on any Keras
backend and rejects the same invalid records. Memory: the model runs batch by batch, and the evaluation
keeps `[N, C]` float32 scores plus `[N, C]` boolean labels: about 19 KB per video with 3862 classes
(190 MB for 10k videos, 1.9 GB for 100k), on top of the framework and the model. The metrics run over
blocks of 2048 videos and over the `[N, 20]` top-k lists, so their working memory stays small whatever N
is. For millions of videos, evaluate shards separately (GAP pools over videos, so average per-shard GAPs
only as an approximation).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from nextvlad import files, records
from nextvlad.metrics import SEGMENT_MAX_PREDICTIONS
from nextvlad.segments import SEGMENT_LENGTH, SEGMENT_STRIDE
from nextvlad.serving import (
    FRAME_INPUTS,
    VIDEO_INPUTS,
    InvalidModelError,
    ModelInfo,
    check_first_record,
    describe_id_layout,
    describe_model,
    load_model,
    resolve_model_file,
)
from trainer.evaluation import compute_evaluation, predict_records
from trainer.evaluation_report import (
    DEFAULT_OUTPUT,
    DEFAULT_SEGMENT_OUTPUT,
    output_paths,
    plot_evaluation,
    write_per_class_csv,
    write_segment_per_class_csv,
    write_submission,
)
from trainer.segment_evaluation import SOURCES, evaluate_segments

logger = logging.getLogger(__name__)


def load_serving_model(model: str) -> tuple[Any, ModelInfo]:
    """Loads a NeXtVLAD serving model and reads what evaluation needs from it (`nextvlad.serving`).

    Args:
        model: a model_dir (holding `model.keras`) or a `.keras` file, local or gs://.

    Returns:
        `(keras_model, info)`: input format, classes and the model's own frame limit.

    Raises:
        FileNotFoundError: no model there.
        ValueError: the file is not a Keras model, not a NeXtVLAD serving model, or saved before models
            owned their preprocessing (the message gives the re-export command).
    """
    try:
        path = resolve_model_file(model)
    except InvalidModelError as e:
        raise FileNotFoundError(str(e)) from None
    loaded = load_model(path)
    return loaded, describe_model(loaded, path)


def _log_record_layout(data_pattern: str, info: ModelInfo) -> None:
    """Fails fast when the first record is of the other kind than the model takes; logs its id layout."""
    first = files.peek_records(data_pattern, 1)
    if not first:
        raise ValueError(f"The files matching {data_pattern!r} hold no records; nothing to evaluate")
    layout = check_first_record(first[0], info, source=repr(data_pattern))
    logger.info("records: %s-level, %s", info.input_format, describe_id_layout(layout))


def evaluate(
    model_path: str,
    data_pattern: str,
    *,
    output: str | None = None,
    label_names: str | None = None,
    batch_size: int | None = None,
    input_format: str | None = None,
    submission: str | None = None,
    top_k: int = 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluates a trained model on TFRecords and writes the metrics JSON, per-class CSV and plot.

    Args:
        model_path: a model_dir written by `trainer.train` (uses its `model.keras`) or a `.keras` file.
        data_pattern: TFRecord glob (local or gs://) of labeled YouTube-8M records.
        output: metrics JSON path; default `eval_metrics.json` beside the model. The per-class CSV
            (`<stem>_per_class.csv`) and plot (`<stem>.png`) go beside it.
        label_names: `label_id,label_name` CSV adding class names to the CSV and plot.
        batch_size: videos per batch (default 64 frame level, 1024 video level).
        input_format: `"frame"` or `"video"`; default (and only valid value): what the model takes.
        submission: also write the Kaggle 2018 submission CSV here.
        top_k: predictions per video for GAP, the per-class counts and the submission.
        progress: show a progress bar while predicting.

    Returns:
        The metrics written to the JSON: `gap`, `hit_at_one`, `perr`, `map`, `num_videos`,
        `num_labeled_videos`, `num_labels`, `num_classes`, `classes_with_positives`, `top_k`, plus
        `model`, `data`, `input_format`, `seconds` and `outputs` (the files written).

    Raises:
        FileNotFoundError: no model, no file matching `data_pattern`, or no label names file.
        ValueError: not a NeXtVLAD serving model, records of the wrong kind, or a bad argument.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if input_format not in (None, "frame", "video"):
        raise ValueError(f"input_format must be 'frame' or 'video', got {input_format!r}")
    start = time.perf_counter()
    names = records.read_label_names(label_names) if label_names else None
    model, info = load_serving_model(model_path)
    model_format = info.input_format
    if input_format is not None and input_format != model_format:
        inputs = ", ".join(sorted([*FRAME_INPUTS, "num_frames"] if model_format == "frame" else VIDEO_INPUTS))
        raise ValueError(
            f"input_format={input_format!r}, but the model at {model_path!r} takes {model_format}-level "
            f"inputs ({inputs}); omit input_format (it is read from the model) or evaluate a "
            f"{input_format}-level model"
        )
    path = info.path
    _log_record_layout(data_pattern, info)
    predictions = predict_records(model, info, data_pattern, batch_size=batch_size, progress=progress)
    logger.info("predicted %d videos; computing metrics", len(predictions))
    evaluation = compute_evaluation(predictions.scores, predictions.labels, top_k=top_k)
    if evaluation.metrics["num_labels"] == 0:
        logger.warning(
            "The records in %r carry no labels: every metric is 0. (Use --submission to score unlabeled "
            "test data.)",
            data_pattern,
        )

    paths = output_paths(model_path, output)
    write_per_class_csv(paths["per_class"], evaluation, label_names=names)
    plot_evaluation(paths["plot"], evaluation, label_names=names)
    if submission:
        write_submission(submission, predictions.ids, predictions.scores, top_k=top_k)
        paths["submission"] = submission
    result = {
        **evaluation.metrics,
        "model": path,
        "data": data_pattern,
        "input_format": model_format,
        "seconds": round(time.perf_counter() - start, 3),
        "outputs": paths,
    }
    files.write_bytes(paths["metrics"], (json.dumps(result, indent=2) + "\n").encode())
    return result


def evaluate_segment_task(
    model_path: str,
    data_pattern: str,
    *,
    output: str | None = None,
    label_names: str | None = None,
    batch_size: int | None = None,
    source: str = "segments",
    segment_length: int = SEGMENT_LENGTH,
    segment_stride: int = SEGMENT_STRIDE,
    max_segments: int = SEGMENT_MAX_PREDICTIONS,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment mAP@`max_segments` of a frame-level model on segment-rated records, written as JSON + CSV.

    Args:
        model_path: a model_dir written by `trainer.train` or a `.keras` file (frame level).
        data_pattern: TFRecord glob (local or gs://) of records with segment ratings.
        output: metrics JSON path; default `segment_eval_metrics.json` beside the model. The per-class CSV
            (`<stem>_per_class.csv`) goes beside it.
        label_names: `label_id,label_name` CSV adding class names to the CSV.
        batch_size: videos read per step.
        source: `"segments"` (the model on each segment) or `"video"` (each video's prediction copied to
            its segments).
        segment_length: frames per segment given to the model.
        segment_stride: frames between segment starts (the ratings' start times must lie on it).
        max_segments: the per-class cut of the ranking (100,000 in the challenge).
        progress: show a progress bar.

    Returns:
        The metrics written to the JSON (`trainer.segment_evaluation.SegmentEvaluation.metrics`) plus
        `model`, `data`, `seconds` and `outputs`.

    Raises:
        FileNotFoundError: no model, no file matching `data_pattern`, or no label names file.
        ValueError: not a frame-level NeXtVLAD serving model, no ratings in the data, or a bad argument.
    """
    start = time.perf_counter()
    names = records.read_label_names(label_names) if label_names else None
    model, info = load_serving_model(model_path)
    _log_record_layout(data_pattern, info)
    evaluation = evaluate_segments(
        model,
        info,
        data_pattern,
        source=source,
        length=segment_length,
        stride=segment_stride,
        max_predictions=max_segments,
        batch_size=batch_size,
        progress=progress,
    )
    paths = output_paths(model_path, output, default=DEFAULT_SEGMENT_OUTPUT)
    del paths["plot"]
    write_segment_per_class_csv(paths["per_class"], evaluation, label_names=names)
    result = {
        **evaluation.metrics,
        "model": info.path,
        "data": data_pattern,
        "seconds": round(time.perf_counter() - start, 3),
        "outputs": paths,
    }
    files.write_bytes(paths["metrics"], (json.dumps(result, indent=2) + "\n").encode())
    return result


def format_segment_summary(metrics: dict[str, Any]) -> str:
    """The segment task's headline numbers, for the terminal."""
    return "\n".join(
        [
            f"segment mAP@{metrics['max_predictions']:,}: {metrics['segment_map']:.4f} "
            f"({metrics['classes_with_positives']} classes with positive ratings; segments scored by "
            f"{'the model on each segment' if metrics['source'] == 'segments' else 'their video'})",
            f"{metrics['num_ratings']:,} ratings ({metrics['num_positive_ratings']:,} positive) of "
            f"{metrics['num_videos']:,} videos; {metrics['num_segments_scored']:,} of "
            f"{metrics['num_segments']:,} segments scored ({metrics['scored']})",
        ]
    )


def format_summary(metrics: dict[str, Any]) -> str:
    """A small two-column table of the headline metrics, for the terminal."""
    k = metrics.get("top_k", 20)
    rows = [
        (f"GAP@{k}", f"{metrics['gap']:.4f}"),
        ("Hit@1", f"{metrics['hit_at_one']:.4f}"),
        ("PERR", f"{metrics['perr']:.4f}"),
        ("mAP", f"{metrics['map']:.4f}"),
        ("videos", f"{metrics['num_videos']:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    rule = "-" * (width + value_width + 3)
    lines = [f"{'metric':<{width}}   {'value':>{value_width}}", rule]
    lines += [f"{name:<{width}}   {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.evaluate",
        description="Evaluate a trained NeXtVLAD model on YouTube-8M TFRecords (GAP@20, Hit@1, PERR, mAP).",
    )
    parser.add_argument("--model", required=True, help="model_dir written by trainer.train, or a .keras file")
    parser.add_argument("--data", required=True, help="TFRecord glob, local or gs:// (quote it in the shell)")
    parser.add_argument(
        "--output",
        help=f"metrics JSON (default: {DEFAULT_OUTPUT} beside the model); the per-class CSV and PNG go "
        "beside it as <stem>_per_class.csv and <stem>.png",
    )
    parser.add_argument("--label_names", help="CSV with label_id,label_name, e.g. label_names_2018.csv")
    parser.add_argument("--batch_size", type=int, help="videos per batch (default 64 frame, 1024 video)")
    parser.add_argument(
        "--input_format", choices=("frame", "video"), help="default: what the model's inputs are"
    )
    parser.add_argument("--submission", help="also write the Kaggle 2018 submission CSV here")
    parser.add_argument("--top_k", type=int, default=20, help="predictions per video for GAP (default 20)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    segments = parser.add_argument_group(
        "segments (the YouTube-8M 2019 segment task)",
        "--segments computes segment mAP@100000 on records with segment ratings instead of the video "
        "metrics, and writes segment_eval_metrics.json and its _per_class.csv beside the model.",
    )
    segments.add_argument("--segments", action="store_true", help="evaluate the segment task")
    segments.add_argument(
        "--segments_from",
        choices=SOURCES,
        default="segments",
        help="score each segment with the model on the segment (default) or with its video's prediction "
        "(the baseline)",
    )
    segments.add_argument("--segment_length", type=int, default=SEGMENT_LENGTH, help="frames per segment")
    segments.add_argument(
        "--segment_stride", type=int, default=SEGMENT_STRIDE, help="frames between segment starts"
    )
    segments.add_argument(
        "--max_segments",
        type=int,
        default=SEGMENT_MAX_PREDICTIONS,
        help="segments ranked per class before the rated ones are looked up (the challenge: 100000)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.segments:
            result = _evaluate_segments(args)
            summary = format_segment_summary(result)
        else:
            result = evaluate(
                args.model,
                args.data,
                output=args.output,
                label_names=args.label_names,
                batch_size=args.batch_size,
                input_format=args.input_format,
                submission=args.submission,
                top_k=args.top_k,
                progress=not args.quiet,
            )
            summary = format_summary(result)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(summary)
    print()
    for kind, path in result["outputs"].items():
        print(f"{kind:>10}: {path}")
    print(f"({result['seconds']:.1f} s)")
    return 0


def _evaluate_segments(args: argparse.Namespace) -> dict[str, Any]:
    if args.submission or args.input_format == "video":
        flag = "--submission" if args.submission else "--input_format video"
        raise ValueError(
            f"{flag} does not apply to --segments (segments are frames; the 2019 submission is written by "
            "`python -m pipelines.segment_submission`)"
        )
    return evaluate_segment_task(
        args.model,
        args.data,
        output=args.output,
        label_names=args.label_names,
        batch_size=args.batch_size,
        source=args.segments_from,
        segment_length=args.segment_length,
        segment_stride=args.segment_stride,
        max_segments=args.max_segments,
        progress=not args.quiet,
    )


if __name__ == "__main__":
    sys.exit(main())
