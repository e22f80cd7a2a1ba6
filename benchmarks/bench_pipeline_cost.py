"""The scoring pipeline's CPU cost per video outside the model, against the floor of reading the bytes.

At 300 frames per video, with a model of the same inputs and outputs whose compute is negligible (the
`meanpool` preset with a hidden size of 8; 3862 classes, so top-k and the output rows cost what they
cost with any model), in one run on one synthetic corpus (`--scale` shards of N videos):

1. the floor: read every file of the corpus and make one numpy copy of its bytes (≈346 KB per video);
   process CPU time per video, best of 3;
2. for each path (`new`: today's, uint8 frames from the wire-format reader to the model; `old`: the
   protobuf parser, dequantization to float32 on the CPU, float32 padding and a float-input model, from
   `benchmarks/legacy_parser.py`): `python -m pipelines.score` on the DirectRunner over N and over
   scale × N videos, each in a fresh process; the cost per video is the marginal process CPU time between
   the two runs ((big - small) ÷ (scale - 1)·N), which cancels imports, Beam start-up and model loading;
3. the bare model's CPU time per video on pre-padded batches of `--batch_size` (the same model, the
   handler's own compiled function), so that "outside the model" can also be read with the model's own
   small cost taken out.

Each repeat runs floor, bare and both paths back to back; medians over `--repeats` are reported, as
CPU-ms per video and as a ratio to the floor (goal: the new path ≤ 2× the floor).

Run from the repository root:

    .venv/bin/python benchmarks/bench_pipeline_cost.py                  # N = 200, scale 10, 3 repeats
    .venv/bin/python benchmarks/bench_pipeline_cost.py --paths new --repeats 1 --profile runs/cost.prof

`--profile FILE` also runs the new path's big run once under cProfile and writes the stats to FILE
(read them with `python -m pstats FILE`).
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

from common import REPO_ROOT, machine_description, score_in_subprocess  # noqa: E402

FRAMES = 300
PATHS = ("new", "old")
# Hidden size 8: the model's compute is negligible next to moving 300 frames; the outputs keep their shape.
MODEL_OVERRIDES = {"hidden_size": 8, "drop_rate": 0.0}
_OLD_PATH_PRELUDE = """
import legacy_parser
from nextvlad import ModelConfig
legacy_parser.install_old_scoring_path(ModelConfig.preset("meanpool", **{overrides!r}))
"""
_PROFILE_PRELUDE = """
import atexit, cProfile
_profile = cProfile.Profile()
_profile.enable()
atexit.register(lambda: (_profile.disable(), _profile.dump_stats({path!r})))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=200, help="N: videos in the small run (default 200)")
    p.add_argument("--scale", type=int, default=10, help="the big run scores scale × N videos (default 10)")
    p.add_argument("--batch_size", type=int, default=64, help="videos per inference batch (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="measurements of each path (default 3)")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="paths to measure")
    p.add_argument("--workdir", help="keep the corpus, models and outputs here (default: a temporary dir)")
    p.add_argument("--profile", help="also profile the new path's big run once; cProfile stats to this file")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


def floor_cpu_seconds(files: list[str]) -> float:
    """Process CPU time to read every file and make one numpy copy of its bytes (best of 3)."""
    import numpy as np

    best = float("inf")
    for _ in range(3):
        cpu = time.process_time()
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            np.frombuffer(data, dtype=np.uint8).copy()
        best = min(best, time.process_time() - cpu)
    return best


def bare_cpu_seconds_per_video(predict, batches: list[dict], videos: int) -> float:
    """CPU time per video of the model's compiled function over pre-padded batches (`videos` in all)."""
    for batch in batches:  # trace every shape first
        predict(batch)
    per_pass = sum(len(b["num_frames"]) for b in batches)
    passes = max(1, round(videos / per_pass))
    cpu = time.process_time()
    for _ in range(passes):
        for batch in batches:
            predict(batch)
    return (time.process_time() - cpu) / (passes * per_pass)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras
    import legacy_parser

    from nextvlad import ModelConfig, build_model, records, serving_model, synthetic
    from pipelines import handler

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_pipeline_cost_"))
    load_before = os.getloadavg()[0]
    print(f"machine: {machine_description()}; load average {load_before:.1f}")
    print(f"workdir: {workdir}")
    config = ModelConfig.preset("meanpool", **MODEL_OVERRIDES)
    corpus = synthetic.generate_corpus(
        workdir / "corpus",
        num_videos=args.videos * args.scale,
        num_classes=config.num_classes,
        shards=args.scale,
        seed=0,
        min_frames=FRAMES,
        max_frames=FRAMES,
    )
    files = corpus["files"]
    small_pattern, big_pattern = files[0], str(workdir / "corpus" / "*.tfrecord")
    print(
        f"corpus: {args.videos} × {args.scale} videos of {FRAMES} frames, "
        f"{corpus['bytes'] / corpus['num_videos'] / 1e3:.0f} KB per video"
    )
    keras.utils.set_random_seed(0)
    model_path = workdir / "model" / "model.keras"
    model_path.parent.mkdir(parents=True, exist_ok=True)
    serving_model(build_model(config)).save(model_path)

    # Bare-model references: the same compiled function the handler uses, on batches padded as each path pads.
    new_model = handler.ScoringModel(str(model_path))
    old_predict = handler._predict_function(legacy_parser.float_input_model(config))
    sample = list(records.iter_tfrecords(files[0]))[: args.batch_size * 2]
    new_batches = [
        handler.pad_batch(
            [records.parse_frame_example(r, num_classes=None) for r in sample[i : i + args.batch_size]],
            "frame",
        )
        for i in range(0, len(sample), args.batch_size)
    ]
    old_batches = [
        legacy_parser.pad_batch(
            [legacy_parser.parse_frame_example(r) for r in sample[i : i + args.batch_size]], "frame"
        )
        for i in range(0, len(sample), args.batch_size)
    ]
    bare_predict = {"new": (new_model.score, new_batches), "old": (old_predict, old_batches)}

    extra_videos = (args.scale - 1) * args.videos
    common_argv = [
        f"--model={model_path}",
        f"--batch_size={args.batch_size}",
        "--runner=DirectRunner",
        "--overwrite",
    ]
    preludes = {"new": "", "old": _OLD_PATH_PRELUDE.format(overrides=MODEL_OVERRIDES)}

    def pipeline(path: str, pattern: str, size: str, prelude: str = "") -> dict:
        out = workdir / f"out-{path}-{size}" / "scores"
        return score_in_subprocess(
            [f"--input={pattern}", f"--output={out}", *common_argv], prelude=preludes[path] + prelude
        )

    repeats = []
    for repeat in range(args.repeats):
        measured: dict = {"floor_cpu_ms_per_video": floor_cpu_seconds(files) / corpus["num_videos"] * 1e3}
        for path in args.paths:
            predict, batches = bare_predict[path]
            bare = bare_cpu_seconds_per_video(predict, batches, extra_videos) * 1e3
            small = pipeline(path, small_pattern, "small")
            big = pipeline(path, big_pattern, "big")
            if big["videos"] - small["videos"] != extra_videos:
                raise RuntimeError(f"{path} path scored {small['videos']} and {big['videos']} videos")
            marginal = (big["cpu_seconds"] - small["cpu_seconds"]) / extra_videos * 1e3
            measured[path] = {
                "small": small,
                "big": big,
                "cpu_ms_per_video": marginal,
                "bare_model_cpu_ms_per_video": bare,
                "outside_model_cpu_ms_per_video": marginal - bare,
                "ratio_to_floor": marginal / measured["floor_cpu_ms_per_video"],
                "outside_model_ratio_to_floor": (marginal - bare) / measured["floor_cpu_ms_per_video"],
            }
        repeats.append(measured)
        line = ", ".join(
            f"{path} {measured[path]['cpu_ms_per_video']:.2f} ms ({measured[path]['ratio_to_floor']:.1f}×; "
            f"model {measured[path]['bare_model_cpu_ms_per_video']:.2f} ms)"
            for path in args.paths
        )
        print(f"repeat {repeat + 1}: floor {measured['floor_cpu_ms_per_video']:.3f} CPU-ms/video; {line}")

    if args.profile:
        profile = str(Path(args.profile).resolve())
        pipeline("new", big_pattern, "big", _PROFILE_PRELUDE.format(path=profile))
        print(f"profile of the new path's big run: {profile}")

    def median(*keys: str) -> float:
        values = []
        for r in repeats:
            value = r
            for key in keys:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    results = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "command": " ".join([os.path.relpath(sys.executable, REPO_ROOT), *sys.argv]),
        "model": {"preset": "meanpool", **MODEL_OVERRIDES},
        "frames": FRAMES,
        "videos_small": args.videos,
        "videos_big": args.videos * args.scale,
        "bytes_per_video": corpus["bytes"] / corpus["num_videos"],
        "batch_size": args.batch_size,
        "repeats": repeats,
        "median": {
            "floor_cpu_ms_per_video": median("floor_cpu_ms_per_video"),
            **{
                f"{path}_{key}": median(path, key)
                for path in args.paths
                for key in (
                    "cpu_ms_per_video",
                    "ratio_to_floor",
                    "bare_model_cpu_ms_per_video",
                    "outside_model_cpu_ms_per_video",
                    "outside_model_ratio_to_floor",
                )
            },
        },
    }
    m = results["median"]
    print(f"median over {args.repeats}: floor {m['floor_cpu_ms_per_video']:.3f} CPU-ms per video")
    for path in args.paths:
        print(
            f"  {path} path: {m[f'{path}_cpu_ms_per_video']:.2f} CPU-ms per video = "
            f"{m[f'{path}_ratio_to_floor']:.2f}× the floor  [goal for new <= 2]; without the bare model's "
            f"{m[f'{path}_bare_model_cpu_ms_per_video']:.2f} ms: "
            f"{m[f'{path}_outside_model_cpu_ms_per_video']:.2f} ms = "
            f"{m[f'{path}_outside_model_ratio_to_floor']:.2f}×"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
