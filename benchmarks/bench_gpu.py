"""Forward throughput of the `paper` and `final` presets on an accelerator, against its matmul rate.

For each preset, precision (float32, bfloat16) and batch size, at T frames per video (default 300), in one
run on the active Keras backend (the GPU kit runs it with `KERAS_BACKEND=jax`):

- forward videos/s with the frames already on the device (the model's own speed): the serving model's
  `stateless_call` compiled once per shape, best of `--repeats` timed calls;
- forward videos/s from host uint8 numpy arrays through the same compiled function, which adds the
  host→device copy of the frames (what the scoring handler pays per batch);
- the accelerator's square-matmul FLOP/s in the same precision (`benchmarks/common.py`), measured between
  the presets, and the model's FLOP/s (the analytic count of `nextvlad/flops.py`) ÷ that rate.

bfloat16 is Keras's `mixed_bfloat16` policy applied as the scoring handler's `--precision mixed` applies it:
float32 weights, dequantization and outputs; everything else computes in bfloat16.

Run (GPU machine, from the repository root; `benchmarks/gpu.sh` does it with the right environment):

    KERAS_BACKEND=jax python benchmarks/bench_gpu.py --json runs/gpu_forward.json

and with `--tiny` (batches of 2 and 4, 2 repeats, 512² matmul) it runs on a CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_description, matmul_flops_per_second  # noqa: E402

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["paper", "final"], help="ModelConfig presets")
    p.add_argument("--frames", type=int, default=300, help="frames per video, T (default 300)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 512, 1024], help="videos per call")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement; best kept")
    p.add_argument("--matmul_size", type=int, default=8192, help="side of the square matmul")
    p.add_argument("--tiny", action="store_true", help="CPU check: batches 2 and 4, 2 repeats, 512² matmul")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch_sizes, args.repeats, args.matmul_size = [2, 4], 2, 512
    return args


def _device_inputs(batch: int, frames: int, config) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "rgb": rng.integers(0, 256, (batch, frames, config.rgb_size), dtype=np.uint8),
        "audio": rng.integers(0, 256, (batch, frames, config.audio_size), dtype=np.uint8),
        "num_frames": np.full((batch,), frames, dtype=np.int32),
    }


def _build(config, precision: str):
    """The serving model of `config` with random weights, in `precision` (see the module docstring)."""
    import keras

    from nextvlad import build_model, serving_model
    from pipelines.handler import _reduced_precision

    keras.utils.set_random_seed(0)
    model = serving_model(build_model(config))
    if precision == "bfloat16":
        model = _reduced_precision(model, policy=PRECISIONS[precision])
    return model


def _compiled_forward(model):
    """`inputs -> outputs` on device-resident inputs, compiled by the backend (JAX: jit; else the
    model's own predict function), and a function that waits for a result."""
    import keras

    if keras.backend.backend() != "jax":
        return model.predict_on_batch, lambda outputs: outputs
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def forward(inputs):
        outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
        return outputs

    def wait(outputs):
        return jax.block_until_ready(outputs)

    return lambda inputs: forward(inputs), wait


def _to_device(inputs: dict) -> dict:
    import keras

    if keras.backend.backend() != "jax":
        return inputs
    import jax

    return {name: jax.device_put(value) for name, value in inputs.items()}


def _call(forward, inputs: dict, wait) -> None:
    wait(forward(inputs))


def _best(fn, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras

    from nextvlad import ModelConfig, count_trainable_parameters
    from nextvlad.flops import forward_flops

    print(f"machine: {machine_description()}", flush=True)
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "frames": args.frames,
        "matmul_size": args.matmul_size,
        "matmul_tflops": {},
        "runs": [],
    }
    for precision in args.precisions:
        rate = matmul_flops_per_second(size=args.matmul_size, dtype=precision)
        results["matmul_tflops"][precision] = rate / 1e12
        print(f"matmul {args.matmul_size}² {precision}: {rate / 1e12:.3g} TFLOP/s", flush=True)
    for preset in args.presets:
        config = ModelConfig.preset(preset)
        flops = forward_flops(config, num_frames=args.frames)
        for precision in args.precisions:
            started = time.perf_counter()
            model = _build(config, precision)
            params = count_trainable_parameters(model)
            forward, wait = _compiled_forward(model)
            print(
                f"{preset} ({params:,} parameters, {flops / 1e9:.2f} GFLOP per video at T={args.frames}), "
                f"{precision}: built in {time.perf_counter() - started:.1f}s",
                flush=True,
            )
            for batch in args.batch_sizes:
                host = _device_inputs(batch, args.frames, config)
                device = _to_device(host)
                on_device = _best(functools.partial(_call, forward, device, wait), args.repeats)
                from_host = _best(functools.partial(_call, forward, host, wait), args.repeats)
                videos_per_second = batch / on_device
                model_flops = videos_per_second * flops
                run = {
                    "preset": preset,
                    "precision": precision,
                    "batch_size": batch,
                    "videos_per_second_on_device": videos_per_second,
                    "videos_per_second_from_host": batch / from_host,
                    "model_tflops": model_flops / 1e12,
                    "model_over_matmul": model_flops / (results["matmul_tflops"][precision] * 1e12),
                }
                results["runs"].append(run)
                print(
                    f"  batch {batch}: {videos_per_second:,.0f} videos/s on device "
                    f"({run['model_tflops']:.3g} TFLOP/s = {run['model_over_matmul']:.2f} of matmul), "
                    f"{run['videos_per_second_from_host']:,.0f} from host uint8",
                    flush=True,
                )
            keras.backend.clear_session()
    # The matmul again after the models: a drifting clock or a busy device shows as a difference.
    for precision in args.precisions:
        rate = matmul_flops_per_second(size=args.matmul_size, dtype=precision) / 1e12
        results["matmul_tflops"][f"{precision}_after"] = rate
        print(f"matmul {args.matmul_size}² {precision}, after the models: {rate:.3g} TFLOP/s", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
