"""Scoring pipeline throughput against the bare model, and its peak memory as the corpus grows.

On one synthetic frame-level corpus (`--scale` shards of N videos) and one model, in one run:

1. bare inference: the first shard's N videos parsed and padded up front into consecutive batches of
   `--batch_size` videos, each padded to its own longest video (exactly what the pipeline's handler feeds
   the model). A first pass compares Keras's `model.predict_on_batch` with the handler's own compiled
   function; the reference is then (scale-1) passes through the handler's function, i.e. as many videos
   as the pipeline's steady-state measurement below, so both take about as long;
2. the pipeline: `python -m pipelines.score` on the DirectRunner over the first shard (N videos) and over
   all shards (scale × N videos), each in a fresh subprocess that reports its wall time (the pipeline's
   own timer: Beam start-up and model loading included), CPU time and peak RSS;
3. per repeat (bare, small run, big run back to back): pipeline ÷ bare videos/s in steady state (the
   marginal rate between the two sizes, (scale-1)·N extra videos ÷ extra seconds, which cancels the fixed
   start-up cost) and end to end; the same for CPU time per video (less sensitive to other
   work on a shared machine); the peak RSS of the big run ÷ the small run (goal <= 1.2); and the share of
   padded frame slots in the batches the handler padded. With `--versus FLAGS`, a second pipeline
   configuration runs in every repeat right after the first (e.g. `--length_buckets=none`). The median
   over `--repeats` is reported.

`--length_mix yt8m` writes the corpus with YouTube-8M's lengths (10% 10-119 frames, 60% 120-299, 30% 300)
instead of `--min_frames`..`--max_frames`.

Run from the repository root:

    .venv/bin/python benchmarks/bench_score.py                      # demo preset, N = 500, scale 10
    .venv/bin/python benchmarks/bench_score.py --preset paper --length_mix yt8m --videos 128 --scale 8 \\
        --versus=--length_buckets=none

Flags after `--` go to the pipeline (e.g. `-- --direct_num_workers=2 --direct_running_mode=multi_threading`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import LENGTH_MIXES, machine_description, score_in_subprocess, write_length_mix_corpus  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo", help="ModelConfig preset (default demo; e.g. paper)")
    p.add_argument("--videos", type=int, default=500, help="N: videos in the small run (default 500)")
    p.add_argument("--scale", type=int, default=10, help="the big run scores scale × N videos (default 10)")
    p.add_argument("--batch_size", type=int, default=64, help="videos per inference batch (default 64)")
    p.add_argument("--min_frames", type=int, default=30, help="shortest synthetic video (default 30)")
    p.add_argument("--max_frames", type=int, default=120, help="longest synthetic video (default 120)")
    p.add_argument(
        "--length_mix",
        choices=sorted(LENGTH_MIXES),
        help="video lengths from a named mix instead of --min_frames..--max_frames (yt8m: 10%% 10-119 "
        "frames, 60%% 120-299, 30%% 300), interleaved in arrival order",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "mixed"),
        default="float32",
        help="the handler's precision, for the bare model and the pipeline alike (default float32)",
    )
    p.add_argument(
        "--versus",
        help="pipeline flags of a second configuration measured in every repeat right after the first "
        "(e.g. '--length_buckets=none'): its steady videos/s and CPU per video ÷ the first's",
    )
    p.add_argument("--repeats", type=int, default=3, help="bare + small + big measurements (default 3)")
    p.add_argument("--workdir", help="keep the corpus, model and outputs here (default: a temporary dir)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument(
        "pipeline_args",
        nargs="*",
        help="extra flags for pipelines.score after `--` (e.g. --direct_num_workers=2)",
    )
    return p.parse_args(argv)


def _bare_inference(predict, batches: list[dict], passes: int) -> dict[str, float]:
    """Bare batched inference over pre-padded batches, `passes` times: videos/s and CPU-s per video."""
    videos = passes * sum(len(b["num_frames"]) for b in batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(passes):
        for batch in batches:
            predict(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"videos_per_second": videos / wall, "cpu_seconds_per_video": cpu / videos}


def _score(pattern: str, model: str, output: str, batch_size: int, extra: list[str]) -> dict:
    argv = [
        f"--input={pattern}",
        f"--model={model}",
        f"--output={output}",
        f"--batch_size={batch_size}",
        "--runner=DirectRunner",
        "--overwrite",
        *extra,
    ]
    return score_in_subprocess(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras

    from nextvlad import (
        ModelConfig,
        build_model,
        count_trainable_parameters,
        records,
        serving_model,
        synthetic,
    )
    from pipelines.handler import ScoringModel, pad_batch

    config = ModelConfig.preset(args.preset)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_score_"))
    load_before = os.getloadavg()[0]
    print(f"machine: {machine_description()}; load average {load_before:.1f}")
    print(f"workdir: {workdir}")

    # Video i of the corpus does not depend on the shard count: shard 0 is the small run's corpus.
    if args.length_mix:
        files = write_length_mix_corpus(
            workdir / "corpus",
            mix=args.length_mix,
            num_videos=args.videos * args.scale,
            shards=args.scale,
            num_classes=config.num_classes,
            seed=0,
        )
        lengths = f"the {args.length_mix} length mix"
    else:
        files = synthetic.generate_corpus(
            workdir / "corpus",
            num_videos=args.videos * args.scale,
            num_classes=config.num_classes,
            shards=args.scale,
            seed=0,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
        )["files"]
        lengths = f"{args.min_frames}-{args.max_frames} frames"
    small_pattern, big_pattern = files[0], str(workdir / "corpus" / "*.tfrecord")
    keras.utils.set_random_seed(0)
    model = serving_model(build_model(config))
    model_path = workdir / "model" / "model.keras"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    params = count_trainable_parameters(model)
    print(
        f"model: preset {args.preset} ({params:,} trainable parameters); corpus: {args.videos} × "
        f"{args.scale} videos, {lengths}; batch {args.batch_size}, {args.precision}"
    )

    videos = [records.parse_frame_example(r, num_classes=None) for r in records.iter_tfrecords(small_pattern)]
    batches = [
        pad_batch(videos[i : i + args.batch_size], "frame") for i in range(0, len(videos), args.batch_size)
    ]
    fill = sum(v["num_frames"] for v in videos) / sum(b["rgb"].shape[0] * b["rgb"].shape[1] for b in batches)
    scoring_model = ScoringModel(str(model_path), precision=args.precision)
    for predict in (model.predict_on_batch, scoring_model.score):  # trace both for every shape
        for batch in batches:
            predict(batch)
    keras_once = _bare_inference(model.predict_on_batch, batches, 1)["videos_per_second"]
    handler_once = _bare_inference(scoring_model.score, batches, 1)["videos_per_second"]
    print(
        f"bare inference, one pass: {keras_once:.1f} videos/s with model.predict_on_batch, "
        f"{handler_once:.1f} with the handler's function (frames / padded frames = {fill:.2f})"
    )

    extra = [*args.pipeline_args, f"--precision={args.precision}"]
    repeats = []
    for repeat in range(args.repeats):
        bare = _bare_inference(scoring_model.score, batches, args.scale - 1)
        small = _score(
            small_pattern, str(model_path), str(workdir / "out-small" / "s"), args.batch_size, extra
        )
        big = _score(big_pattern, str(model_path), str(workdir / "out-big" / "s"), args.batch_size, extra)
        extra_videos = big["videos"] - small["videos"]
        steady = extra_videos / (big["seconds"] - small["seconds"])
        steady_cpu = (big["cpu_seconds"] - small["cpu_seconds"]) / extra_videos
        measured = {
            "bare_videos_per_second": bare["videos_per_second"],
            "bare_cpu_ms_per_video": bare["cpu_seconds_per_video"] * 1e3,
            "small": small,
            "big": big,
            "steady_videos_per_second": steady,
            "steady_cpu_ms_per_video": steady_cpu * 1e3,
            "end_to_end_videos_per_second": big["videos"] / big["seconds"],
            "ratio_steady": steady / bare["videos_per_second"],
            "ratio_end_to_end": big["videos"] / big["seconds"] / bare["videos_per_second"],
            "ratio_cpu": bare["cpu_seconds_per_video"] / steady_cpu,
            "rss_ratio": big["peak_rss_mib"] / small["peak_rss_mib"],
            "pipeline_padded_fraction": 1 - big["frames"] / big["padded_slots"],
        }
        if args.versus:
            versus = [*extra, *shlex.split(args.versus)]
            other_small = _score(
                small_pattern, str(model_path), str(workdir / "out-small" / "s"), args.batch_size, versus
            )
            other_big = _score(
                big_pattern, str(model_path), str(workdir / "out-big" / "s"), args.batch_size, versus
            )
            other_steady = extra_videos / (other_big["seconds"] - other_small["seconds"])
            other_cpu = (other_big["cpu_seconds"] - other_small["cpu_seconds"]) / extra_videos
            measured["versus"] = {
                "flags": args.versus,
                "small": other_small,
                "big": other_big,
                "steady_videos_per_second": other_steady,
                "steady_cpu_ms_per_video": other_cpu * 1e3,
                "pipeline_padded_fraction": 1 - other_big["frames"] / other_big["padded_slots"],
            }
            measured["speed_over_versus"] = steady / other_steady
            measured["versus_cpu_over_cpu"] = other_cpu / steady_cpu
            print(
                f"  versus {args.versus}: steady {other_steady:.1f} videos/s, "
                f"{other_cpu * 1e3:.2f} CPU-ms/video, padded frames "
                f"{measured['versus']['pipeline_padded_fraction']:.1%}; first ÷ versus: videos/s "
                f"{measured['speed_over_versus']:.2f}, versus ÷ first CPU per video "
                f"{measured['versus_cpu_over_cpu']:.2f}"
            )
        repeats.append(measured)
        print(
            f"repeat {repeat + 1}: bare {bare['videos_per_second']:.1f} videos/s; pipeline {small['videos']} "
            f"videos in {small['seconds']:.1f}s, {big['videos']} in {big['seconds']:.1f}s -> steady "
            f"{steady:.1f} videos/s (ratio {measured['ratio_steady']:.2f}), end to end "
            f"{measured['end_to_end_videos_per_second']:.1f} (ratio {measured['ratio_end_to_end']:.2f}); "
            f"CPU-ms/video bare {measured['bare_cpu_ms_per_video']:.2f} vs pipeline "
            f"{measured['steady_cpu_ms_per_video']:.2f}; peak RSS {small['peak_rss_mib']:.0f} / "
            f"{big['peak_rss_mib']:.0f} MiB; padded frames {measured['pipeline_padded_fraction']:.1%} of the "
            f"pipeline's batches ({1 - fill:.1%} in the bare batches)"
        )

    def median(key: str) -> float:
        return statistics.median(r[key] for r in repeats)

    if args.versus:
        print(
            f"median over {args.repeats}, first ÷ versus ({args.versus}): steady videos/s "
            f"{median('speed_over_versus'):.2f}; versus ÷ first, CPU per video "
            f"{median('versus_cpu_over_cpu'):.2f}"
        )

    results = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "load_average_1min": [load_before, os.getloadavg()[0]],  # other work on the machine
        "command": " ".join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv]),
        "preset": args.preset,
        "trainable_parameters": params,
        "videos_small": args.videos,
        "videos_big": args.videos * args.scale,
        "batch_size": args.batch_size,
        "frames": [args.min_frames, args.max_frames],
        "frames_per_padded_frame": fill,
        "length_mix": args.length_mix,
        "precision": args.precision,
        "bare_one_pass_videos_per_second": {"predict_on_batch": keras_once, "handler_function": handler_once},
        "pipeline_extra_args": extra,
        "repeats": repeats,
        "median": {
            key: median(key)
            for key in (
                "bare_videos_per_second",
                "steady_videos_per_second",
                "end_to_end_videos_per_second",
                "ratio_steady",
                "ratio_end_to_end",
                "bare_cpu_ms_per_video",
                "steady_cpu_ms_per_video",
                "ratio_cpu",
                "pipeline_padded_fraction",
            )
        },
        "rss_ratio_max": max(r["rss_ratio"] for r in repeats),
    }
    m = results["median"]
    print(
        f"median over {args.repeats}: pipeline ÷ bare = {m['ratio_steady']:.2f} steady state "
        f"({m['steady_videos_per_second']:.1f} vs {m['bare_videos_per_second']:.1f} videos/s), "
        f"{m['ratio_end_to_end']:.2f} end to end  [goal: >= 1.0, paper, yt8m mix, CPU; >= 0.8 on a GPU]"
    )
    print(
        f"CPU per video, bare ÷ pipeline: {m['ratio_cpu']:.2f} ({m['bare_cpu_ms_per_video']:.2f} vs "
        f"{m['steady_cpu_ms_per_video']:.2f} CPU-ms)"
    )
    print(
        f"padded frames: {m['pipeline_padded_fraction']:.1%} of the pipeline's batch slots, "
        f"{1 - fill:.1%} of the bare model's (arrival order)"
    )
    print(
        f"peak RSS {args.videos * args.scale} ÷ {args.videos} videos: at most "
        f"{results['rss_ratio_max']:.2f}  [goal <= 1.2]"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
