"""Segment task (YouTube-8M 2019): quality of three ways to score segments, and what segments cost.

`quality`: on a synthetic segment-rated corpus (`nextvlad.synthetic --segments`; shards 0..n-2 train,
the last shard is held out), for each model seed:

- train a video-level model on the training videos (`trainer.train`, `--preset`, `--epochs`);
- (a) its video-level prediction copied to every segment of the held-out videos
  (`trainer.evaluate --segments --segments_from video`);
- (b) the same model applied to each 5-frame segment (`trainer.evaluate --segments`);
- (b') the control for (c)'s extra training: the video model trained for as many more steps on videos
  (same learning-rate schedule), applied to each segment;
- (c) the video model fine-tuned on the training videos' rated segments
  (`trainer.train --segment_labels --init_model`, `--finetune_epochs`), applied to each segment.

and reports segment mAP@100000 of each, per seed, with the mean, the sample standard deviation and the
margins (c) - (b) and (b) - (a) per seed. Goal: (c) > (b) > (a).

`speed`: the cost of `--segments` for a model with random weights (`--preset`, default paper) on videos of
YouTube-8M's length mix, in one process: the bare model on a batch of videos padded as the pipeline pads
them, and on all of their 5-frame segments (in calls of each `--segment_batch_sizes`), alternated,
best of `--repeats`; reports videos/s with segments ÷ without (1 / (1 + segment time ÷ video time)) and
the analytic FLOP ratio. The pipeline's own ratio comes from `benchmarks/bench_score.py --versus=--segments`.

Run from the repository root:

    .venv/bin/python benchmarks/bench_segments.py quality --seeds 0 1 2
    .venv/bin/python benchmarks/bench_segments.py speed --preset paper
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_description  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("quality", help="segment mAP of (a) video copy, (b) video model, (c) fine-tuned")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds (default 0 1 2)")
    q.add_argument("--corpus_seed", type=int, default=0, help="synthetic corpus seed (default 0)")
    q.add_argument("--num_videos", type=int, default=2000, help="videos in the corpus (default 2000)")
    q.add_argument("--shards", type=int, default=4, help="shards; the last is held out (default 4)")
    q.add_argument("--num_classes", type=int, default=50, help="classes (default 50)")
    q.add_argument("--setting", default="hard", help="synthetic setting (default hard)")
    q.add_argument("--segment_ratings", type=int, default=3, help="ratings of each kind per label (3)")
    q.add_argument("--preset", default="demo", help="model preset (default demo)")
    q.add_argument("--epochs", type=int, default=5, help="video-level training epochs (default 5)")
    q.add_argument("--finetune_epochs", type=int, default=2, help="segment fine-tuning epochs (default 2)")
    q.add_argument("--batch_size", type=int, default=64, help="training batch (default 64)")
    q.add_argument("--learning_rate", type=float, help="peak learning rate (default: the trainer's)")
    q.add_argument("--workdir", help="keep corpus and models here (default: a temporary dir)")
    q.add_argument("--json", help="also write the results to this JSON file")
    s = sub.add_parser("speed", help="model time with and without segments")
    s.add_argument("--preset", default="paper", help="model preset (default paper)")
    s.add_argument("--videos", type=int, default=64, help="videos in the batch (default 64)")
    s.add_argument(
        "--segment_batch_sizes", type=int, nargs="+", default=[128, 256, 512, 1024], help="segments per call"
    )
    s.add_argument("--repeats", type=int, default=3, help="alternated measurements (default 3)")
    s.add_argument("--precision", choices=("float32", "mixed"), default="float32")
    s.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------------


def _train(model_dir: Path, train: str, *, preset: str, num_classes: int, seed: int, **options) -> dict:
    from nextvlad.config import ModelConfig
    from trainer import training
    from trainer.config import TrainConfig

    init = options.get("init_model")
    config = (
        ModelConfig.from_json(Path(init) / "config.json")
        if init
        else ModelConfig.preset(preset, num_classes=num_classes)
    )
    train_config = TrainConfig(
        train_data=train, model_dir=str(model_dir), seed=seed, verbose=False, **options
    )
    return training.train(config, train_config)


def _segment_map(model_dir: Path, data: str, source: str) -> float:
    from trainer.evaluate import evaluate_segment_task

    result = evaluate_segment_task(
        str(model_dir), data, output=str(model_dir / f"segments_{source}.json"), source=source, progress=False
    )
    return result["segment_map"]


def quality(args: argparse.Namespace) -> dict:
    from nextvlad import synthetic
    from nextvlad.segments import count_rated_segments

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_segments_"))
    corpus = workdir / "corpus"
    summary = synthetic.generate_corpus(
        corpus,
        num_videos=args.num_videos,
        num_classes=args.num_classes,
        shards=args.shards,
        seed=args.corpus_seed,
        setting=args.setting,
        segment_ratings=args.segment_ratings,
    )
    train, test = summary["files"][:-1], summary["files"][-1]
    segments = count_rated_segments(train)
    print(
        f"corpus: {args.num_videos} videos, {args.num_classes} classes, {args.setting}, "
        f"{summary['ratings']} ratings ({summary['positive_ratings']} present); training: "
        f"{len(train)} shards, {segments} rated segments; held out: {test}"
    )
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        video = workdir / f"video-{seed}"
        common = dict(preset=args.preset, num_classes=args.num_classes, seed=seed, batch_size=args.batch_size)
        if args.learning_rate is not None:
            common["learning_rate"] = args.learning_rate
        trained = _train(video, train, epochs=args.epochs, **common)
        finetune_steps = args.finetune_epochs * -(-segments // args.batch_size)
        tuned = workdir / f"finetuned-{seed}"
        _train(
            tuned, train, epochs=args.finetune_epochs, init_model=str(video), segment_labels=True, **common
        )
        longer = workdir / f"video-longer-{seed}"
        _train(longer, train, max_steps=finetune_steps, init_model=str(video), **common)
        row = {
            "seed": seed,
            "video_steps": trained["global_step"],
            "finetune_steps": finetune_steps,
            "a_video_copied": _segment_map(video, test, "video"),
            "b_video_model_on_segments": _segment_map(video, test, "segments"),
            "b2_video_model_trained_longer_on_segments": _segment_map(longer, test, "segments"),
            "c_finetuned_on_segments": _segment_map(tuned, test, "segments"),
            "seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        print(
            f"seed {seed}: (a) {row['a_video_copied']:.4f}  (b) {row['b_video_model_on_segments']:.4f}  "
            f"(b') {row['b2_video_model_trained_longer_on_segments']:.4f}  "
            f"(c) {row['c_finetuned_on_segments']:.4f}  ({row['seconds']:.0f} s)"
        )
    keys = [k for k in rows[0] if k[:2] in ("a_", "b_", "b2", "c_")]
    stats = {}
    for key in keys:
        values = [r[key] for r in rows]
        stats[key] = {
            "mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
    margins = {
        "c_minus_b": [r["c_finetuned_on_segments"] - r["b_video_model_on_segments"] for r in rows],
        "c_minus_b2": [
            r["c_finetuned_on_segments"] - r["b2_video_model_trained_longer_on_segments"] for r in rows
        ],
        "b_minus_a": [r["b_video_model_on_segments"] - r["a_video_copied"] for r in rows],
    }
    for key, value in stats.items():
        print(f"{key}: {value['mean']:.4f} ± {value['sd']:.4f}")
    for key, values in margins.items():
        print(f"{key}: " + ", ".join(f"{v:+.4f}" for v in values))
    return {
        "corpus": {
            k: summary[k]
            for k in ("num_videos", "num_classes", "setting", "seed", "ratings", "positive_ratings")
        },
        "training_rated_segments": segments,
        "preset": args.preset,
        "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "batch_size": args.batch_size,
        "rows": rows,
        "stats": stats,
        "margins": margins,
    }


# --------------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------------


def speed(args: argparse.Namespace) -> dict:
    import keras
    import numpy as np

    from nextvlad import ModelConfig, build_model, serving_model
    from nextvlad.flops import forward_flops
    from nextvlad.segments import segment_chunks, segment_inputs
    from nextvlad.serving import pad_batch
    from pipelines.handler import ScoringModel
    from pipelines.score_arguments import DEFAULT_LENGTH_BUCKETS

    config = ModelConfig.preset(args.preset)
    keras.utils.set_random_seed(0)
    path = Path(tempfile.mkdtemp(prefix="bench_segments_")) / "model.keras"
    serving_model(build_model(config)).save(path)
    model = ScoringModel(str(path), precision=args.precision)
    rng = np.random.default_rng(0)
    # YouTube-8M's length mix (as benchmarks/common.py's yt8m mix): 10% 10-119 frames, 60% 120-299, 30% 300.
    kind = rng.choice(3, size=args.videos, p=[0.1, 0.6, 0.3])
    lengths = np.where(
        kind == 0,
        rng.integers(10, 120, args.videos),
        np.where(kind == 1, rng.integers(120, 300, args.videos), 300),
    )
    videos = [
        {
            "id": f"v{i}",
            "num_frames": int(n),
            "rgb": rng.integers(0, 256, (n, 1024), dtype=np.uint8),
            "audio": rng.integers(0, 256, (n, 128), dtype=np.uint8),
        }
        for i, n in enumerate(lengths)
    ]
    batch = pad_batch(videos, "frame", lengths=DEFAULT_LENGTH_BUCKETS)
    segments = segment_inputs(videos)
    num_segments = int(segments.start_time.size)

    def video_pass() -> None:
        model.score(batch)

    def segment_pass(chunk: int) -> None:
        for part, _ in segment_chunks(segments.inputs, chunk):
            model.score(part)

    video_pass()
    for chunk in args.segment_batch_sizes:
        segment_pass(chunk)  # trace every shape first
    video_seconds = []
    segment_seconds = {chunk: [] for chunk in args.segment_batch_sizes}
    for _ in range(args.repeats):
        started = time.perf_counter()
        video_pass()
        video_seconds.append(time.perf_counter() - started)
        for chunk in args.segment_batch_sizes:
            started = time.perf_counter()
            segment_pass(chunk)
            segment_seconds[chunk].append(time.perf_counter() - started)
    best_video = min(video_seconds)
    flops_video = sum(forward_flops(config, num_frames=int(n)) for n in lengths)
    flops_segments = sum(forward_flops(config, num_frames=int(k)) for k in segments.inputs["num_frames"])
    results = {
        "preset": args.preset,
        "precision": args.precision,
        "videos": args.videos,
        "frames": int(lengths.sum()),
        "segments": num_segments,
        "video_seconds_best": best_video,
        "segment_seconds_best": {c: min(v) for c, v in segment_seconds.items()},
        "ratio_with_over_without": {
            c: best_video / (best_video + min(v)) for c, v in segment_seconds.items()
        },
        "flop_ratio_with_over_without": flops_video / (flops_video + flops_segments),
        "video_seconds": video_seconds,
        "segment_seconds": segment_seconds,
    }
    print(
        f"{args.videos} videos ({results['frames']} frames, {num_segments} segments), preset {args.preset}, "
        f"{args.precision}: video pass {best_video:.2f} s ({args.videos / best_video:.1f} videos/s)"
    )
    for chunk in args.segment_batch_sizes:
        print(
            f"  segments in calls of {chunk}: {results['segment_seconds_best'][chunk]:.2f} s -> videos/s "
            f"with segments ÷ without {results['ratio_with_over_without'][chunk]:.3f}"
        )
    print(f"  FLOPs (matrix products): with ÷ without {results['flop_ratio_with_over_without']:.3f}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    print(f"machine: {machine_description()}; load average {load_before:.1f}")
    results = quality(args) if args.mode == "quality" else speed(args)
    results.update(
        date=datetime.date.today().isoformat(),
        machine=machine_description(),
        load_average_1min=[load_before, os.getloadavg()[0]],
        command=" ".join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv]),
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
