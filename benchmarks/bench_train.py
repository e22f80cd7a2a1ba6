"""Training throughput (examples/s) of a model preset against this machine's measured matmul rate.

    python benchmarks/bench_train.py                                   # paper preset, T=300, batch 8, CPU
    KERAS_BACKEND=jax python benchmarks/bench_train.py --batch_size 256 --mixed_precision   # GPU
    KERAS_BACKEND=torch python benchmarks/bench_train.py --batch_size 256 --mixed_precision

Each step is a full training step of `trainer.train`'s model: the network with its loss
(`trainer.losses.TrainingModel`), Adam with per-variable clipping, on random inputs of exactly
`--num_frames` frames that are already in memory (so the input pipeline is not measured).

FLOPs are counted analytically by `nextvlad.flops.forward_flops`: 2 × multiply-adds of the matrix
products of one video's forward pass. For the NeXtVLAD branch of a modality with N features, T frames,
expansion λ, G groups and K clusters:

    2·T·(N·λN  +  λN·G  +  λN·G·K  +  G·K·λN/G)      expansion, attention, cluster logits, aggregation

then the head: 2·(D_pooled·H + 2·H·H/r) + the classifier (2·H·C, or 2·H·C·(2M+1) for an M-expert MoE),
times the number of branches. A training step costs about 3× the forward pass (forward, plus the
gradients with respect to activations and to weights), so

    efficiency = 3 × forward FLOPs per example × examples/s ÷ measured fp32 matmul FLOP/s

(with --mixed_precision the ratio against the measured half-precision matmul rate is printed too).
The element-wise work (softmax, BatchNorm, normalisation), the optimizer update of every weight and the
input copy are not counted, which is what keeps the ratio below 1.
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
from common import machine_description, matmul_flops_per_second  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="paper", help="model preset (default: paper)")
    parser.add_argument("--batch_size", type=int, default=8, help="videos per training step (default: 8)")
    parser.add_argument("--num_frames", type=int, default=300, help="frames per video, T (default: 300)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (default: 5)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps first (compilation) (default: 2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved training/matmul rounds (default: 2)"
    )
    parser.add_argument(
        "--mixed_precision",
        action="store_true",
        help="mixed_float16 on GPU, mixed_bfloat16 on CPU (as trainer.train --mixed_precision)",
    )
    parser.add_argument("--matmul_size", type=int, default=4096, help="square matmul size (default: 4096)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def _training_step(args: argparse.Namespace):
    """(config, step function) for a compiled training model on random in-memory batches."""
    import keras

    from nextvlad import ModelConfig
    from trainer.config import TrainConfig
    from trainer.training_model import build_training_model

    config = ModelConfig.preset(args.preset)
    model = build_training_model(
        config, TrainConfig(train_data="unused", model_dir="unused"), total_steps=10**9
    )
    rng = np.random.default_rng(0)
    b, t = args.batch_size, args.num_frames
    if config.input_format == "video":
        inputs = {
            "mean_rgb": rng.normal(size=(b, config.rgb_size)).astype("float32"),
            "mean_audio": rng.normal(size=(b, config.audio_size)).astype("float32"),
        }
    else:
        inputs = {
            "rgb": rng.normal(size=(b, t, config.rgb_size)).astype("float32"),
            "audio": rng.normal(size=(b, t, config.audio_size)).astype("float32"),
            "num_frames": np.full((b,), t, "int32"),
        }
    labels = (rng.random((b, config.num_classes)) < 3.0 / config.num_classes).astype("float32")

    def step():
        # Returns the loss as a number, which waits for the step to finish on every backend.
        return float(
            keras.ops.convert_to_numpy(model.train_on_batch(inputs, labels, return_dict=True)["loss"])
        )

    return config, model, step


def main(argv=None) -> dict:
    args = parse_args(argv)
    import keras

    from nextvlad.flops import forward_flops
    from nextvlad.model import count_trainable_parameters

    machine = machine_description()
    on_gpu = "CPU" not in machine.rsplit("(", 1)[-1]
    half = "float16" if on_gpu else "bfloat16"
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{half}")
    config, model, step = _training_step(args)
    flops_per_example = forward_flops(config, num_frames=args.num_frames)

    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    step_seconds, matmul32, matmul16 = float("inf"), 0.0, 0.0
    for _ in range(args.rounds):  # interleaved, best of each: the machine is shared and noisy
        begin = time.perf_counter()
        for _ in range(args.steps):
            step()
        step_seconds = min(step_seconds, (time.perf_counter() - begin) / args.steps)
        matmul32 = max(matmul32, matmul_flops_per_second(size=args.matmul_size, dtype="float32"))
        if args.mixed_precision:
            matmul16 = max(matmul16, matmul_flops_per_second(size=args.matmul_size, dtype=half))
    examples_per_second = args.batch_size / step_seconds
    training_rate = 3 * flops_per_example * examples_per_second
    result = {
        "preset": args.preset,
        "batch_size": args.batch_size,
        "num_frames": args.num_frames,
        "precision": f"mixed_{half}" if args.mixed_precision else "float32",
        "backend": keras.backend.backend(),
        "machine": machine,
        "trainable_parameters": count_trainable_parameters(model.network),
        "examples_per_second": round(examples_per_second, 2),
        "seconds_per_step": round(step_seconds, 4),
        "forward_gflops_per_example": round(flops_per_example / 1e9, 3),
        "training_gflops_per_second": round(training_rate / 1e9, 1),
        "matmul_fp32_gflops_per_second": round(matmul32 / 1e9, 1),
        "efficiency_vs_fp32_matmul": round(training_rate / matmul32, 3),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if args.mixed_precision:
        result[f"matmul_{half}_gflops_per_second"] = round(matmul16 / 1e9, 1)
        result[f"efficiency_vs_{half}_matmul"] = round(training_rate / matmul16, 3)
    print(
        f"{args.preset} training, B={args.batch_size}, T={args.num_frames}, {result['precision']}, "
        f"{result['backend']}: {examples_per_second:.2f} examples/s "
        f"({step_seconds * 1e3:.0f} ms/step, 3 x {flops_per_example / 1e9:.2f} GFLOP/example "
        f"= {training_rate / 1e9:.1f} GFLOP/s)"
    )
    print(
        f"matmul fp32 {matmul32 / 1e9:.1f} GFLOP/s -> training efficiency {training_rate / matmul32:.3f}"
        + (
            f"; matmul {half} {matmul16 / 1e9:.1f} GFLOP/s -> {training_rate / matmul16:.3f}"
            if args.mixed_precision
            else ""
        )
    )
    print(f"machine: {machine}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
