"""Forward-pass throughput of a model preset against this machine's measured matmul rate.

    python benchmarks/bench_model.py                      # paper preset, T=300, CPU
    KERAS_BACKEND=jax python benchmarks/bench_model.py --batch_size 256 --precision mixed   # GPU

Prints videos/s, the model's achieved FLOP/s (analytic forward FLOPs, see nextvlad/flops.py), the
matmul FLOP/s measured in the same run and their ratio (goal on CPU: >= 0.6).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from common import best_seconds, machine_description, matmul_flops_per_second  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="paper", help="model preset (default: paper)")
    parser.add_argument("--batch_size", type=int, default=32, help="videos per forward call (default: 32)")
    parser.add_argument("--num_frames", type=int, default=300, help="frames per video, T (default: 300)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (default: 5)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved model/matmul rounds (default: 2)")
    parser.add_argument(
        "--precision",
        choices=("float32", "mixed"),
        default="float32",
        help="float32, or mixed (float16 on GPU, bfloat16 on CPU) (default: float32)",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import keras

    from nextvlad import ModelConfig, build_model, serving_model
    from nextvlad.flops import forward_flops

    on_gpu = "CPU" not in machine_description().rsplit("(", 1)[-1]
    if args.precision == "mixed":
        keras.mixed_precision.set_global_policy("mixed_float16" if on_gpu else "mixed_bfloat16")
    config = ModelConfig.preset(args.preset)
    model = serving_model(build_model(config))
    rng = np.random.default_rng(0)
    inputs = {
        "rgb": rng.normal(size=(args.batch_size, args.num_frames, config.rgb_size)).astype("float32"),
        "audio": rng.normal(size=(args.batch_size, args.num_frames, config.audio_size)).astype("float32"),
        "num_frames": np.full((args.batch_size,), args.num_frames, "int32"),
    }
    flops_per_video = forward_flops(config, num_frames=args.num_frames)
    dtype = "float32" if args.precision == "float32" else ("float16" if on_gpu else "bfloat16")

    model_seconds, matmul_rate = float("inf"), 0.0
    started = time.perf_counter()
    for _ in range(args.rounds):  # interleaved, best of each: the machine is shared and noisy
        model_seconds = min(
            model_seconds, best_seconds(lambda: model.predict_on_batch(inputs), repeats=args.repeats)
        )
        matmul_rate = max(matmul_rate, matmul_flops_per_second(dtype=dtype, repeats=args.repeats))
    videos_per_second = args.batch_size / model_seconds
    model_rate = flops_per_video * videos_per_second
    result = {
        "preset": args.preset,
        "batch_size": args.batch_size,
        "num_frames": args.num_frames,
        "precision": args.precision,
        "machine": machine_description(),
        "videos_per_second": round(videos_per_second, 2),
        "gflops_per_video": round(flops_per_video / 1e9, 3),
        "model_gflops_per_second": round(model_rate / 1e9, 1),
        "matmul_gflops_per_second": round(matmul_rate / 1e9, 1),
        "efficiency": round(model_rate / matmul_rate, 3),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"{args.preset} forward, B={args.batch_size}, T={args.num_frames}, {args.precision}: "
        f"{videos_per_second:.1f} videos/s = {model_rate / 1e9:.1f} GFLOP/s; "
        f"matmul {matmul_rate / 1e9:.1f} GFLOP/s; efficiency {model_rate / matmul_rate:.2f} (goal >= 0.6)"
    )
    print(f"machine: {result['machine']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
