"""Extraction benchmark: decoding at 1 frame/s against the FFmpeg command line, and the image backbone.

    .venv/bin/python benchmarks/bench_extract.py [--seconds 60] [--repeats 3] [--output runs/bench_extract]

1. Decode: a 720p H.264 clip (30 fps, libx264 `fast` preset with B-frames, made here with PyAV) is
   sampled at one frame per second by `nextvlad.extraction.decode.decode_video` (scaled to 299×299
   RGB), with and without skipping non-reference frames, and by the FFmpeg command line shipped in
   `imageio-ffmpeg` doing the same (`ffmpeg -i X -vf fps=1 -f rawvideo -`), interleaved, best of
   `--repeats`. Rates are seconds of video per CPU-second (process CPU time; the command line's from
   `RUSAGE_CHILDREN`) and per wall-second.
2. Backbone: Inception-v3 (the default; random weights have the same cost) at 299×299 in chunks of 32
   frames, float32 and mixed (bfloat16 on CPU): frames/s, and model FLOP/s (analytic count of its
   convolutions and dense layers) ÷ the machine's matmul FLOP/s in the same dtype, measured in the same
   run. VGGish seconds of audio per second as well.
Prints one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import best_seconds, machine_description, matmul_flops_per_second  # noqa: E402

from nextvlad.extraction.clips import write_clip  # noqa: E402
from nextvlad.extraction.decode import decode_video  # noqa: E402


def _moving_picture(size: tuple[int, int]):
    """720p frames of a panning textured scene with moving shapes: content a camera could make, which
    H.264 codes with motion compensation and B-frames (per-frame random noise would defeat both)."""
    height, width = size
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 48, size=(height, 2 * width, 1), dtype=np.uint8)  # fixed, panned
    ys, xs = np.mgrid[0:height, 0:width]

    def draw(t: float) -> np.ndarray:
        pan = int(40 * t) % width
        image = np.empty((height, width, 3), np.uint8)
        image[..., 0] = ((xs + 40 * t) % 200).astype(np.uint8)
        image[..., 1] = ((ys + 25 * t) % 200).astype(np.uint8)
        image[..., 2] = ((xs + ys) // 8 % 200).astype(np.uint8)
        image += texture[:, pan : pan + width]
        for k in range(6):
            cy = int((height / 2) + (height / 3) * np.sin(0.7 * t + k))
            cx = int((width / 2) + (width / 3) * np.cos(0.5 * t + 2 * k))
            image[max(0, cy - 40) : cy + 40, max(0, cx - 60) : cx + 60] = (255 - 40 * k, 40 * k, 128)
        return image

    return draw


def _cpu_and_wall(fn) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return time.process_time() - cpu + children, time.perf_counter() - wall


def bench_decode(clip: str, seconds: float, repeats: int) -> dict:
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    command = [ffmpeg, "-v", "error", "-i", clip, "-vf", "fps=1", "-f", "rawvideo", "-"]
    runs = {
        "pyav_skip_nonref": lambda: decode_video(clip, image_size=(299, 299), with_audio=False),
        "pyav_all_frames": lambda: decode_video(
            clip, image_size=(299, 299), with_audio=False, skip_unshown=False
        ),
        "ffmpeg_cli": lambda: subprocess.run(command, stdout=subprocess.DEVNULL, check=True),
    }
    best: dict[str, tuple[float, float]] = {}
    for fn in runs.values():  # warm-up: file cache, libraries
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():  # interleaved, so that load on the shared machine hits all alike
            cpu, wall = _cpu_and_wall(fn)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], cpu), min(old[1], wall))
    frames = decode_video(clip, image_size=(299, 299), with_audio=False).num_frames
    out = {"clip_seconds": seconds, "frames_out": frames, "ffmpeg": imageio_ffmpeg.get_ffmpeg_version()}
    for name, (cpu, wall) in best.items():
        out[name] = {
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "video_s_per_cpu_s": round(seconds / cpu, 1),
            "video_s_per_wall_s": round(seconds / wall, 1),
        }
    for name in ("pyav_skip_nonref", "pyav_all_frames"):
        out[f"{name}_vs_cli_cpu"] = round(best["ffmpeg_cli"][0] / best[name][0], 2)
        out[f"{name}_vs_cli_wall"] = round(best["ffmpeg_cli"][1] / best[name][1], 2)
    return out


def model_flops(model) -> int:
    """Multiply-adds × 2 of every Conv2D and Dense layer (nested models included), per example."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels_out = layer.output.shape
            kh, kw = layer.kernel_size
            channels_in = layer.input.shape[-1]
            total += 2 * height * width * kh * kw * channels_in * channels_out // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def bench_backbone(repeats: int, chunk: int = 32) -> dict:
    from nextvlad.extraction.backbone import Backbone, BackboneSpec

    images = np.random.default_rng(0).integers(0, 256, size=(chunk, 299, 299, 3), dtype=np.uint8)
    out = {}
    for precision, dtype in (("float32", "float32"), ("mixed", "bfloat16")):
        backbone = Backbone(BackboneSpec(weights="none"), precision=precision, chunk_size=chunk)
        flops = model_flops(backbone.model)
        cpu = time.process_time()
        seconds = best_seconds(lambda backbone=backbone: backbone.features(images), repeats=repeats)
        cpu = (time.process_time() - cpu) / (repeats + 1)  # per call, warm-up included
        matmul = matmul_flops_per_second(dtype=dtype, size=2048)
        out[precision] = {
            "frames_per_s": round(chunk / seconds, 2),
            "frames_per_cpu_s": round(chunk / cpu, 2),
            "gflop_per_frame": round(flops / 1e9, 3),
            "model_gflop_s": round(flops * chunk / seconds / 1e9, 1),
            "matmul_gflop_s": round(matmul / 1e9, 1),
            "model_vs_matmul": round(flops * chunk / seconds / matmul, 2),
        }
    return out


def bench_chunks(chunks: list[int], repeats: int) -> dict:
    """Inception-v3 float32 frames per CPU-second at each chunk size (frames per network call)."""
    from nextvlad.extraction.backbone import Backbone, BackboneSpec

    out = {}
    images = np.random.default_rng(0).integers(0, 256, size=(max(chunks), 299, 299, 3), dtype=np.uint8)
    for chunk in chunks:
        backbone = Backbone(BackboneSpec(weights="none"), chunk_size=chunk)
        cpu = time.process_time()
        seconds = best_seconds(lambda backbone=backbone: backbone.features(images), repeats=repeats)
        cpu = (time.process_time() - cpu) / (repeats + 1)
        out[chunk] = {
            "frames_per_s": round(len(images) / seconds, 2),
            "frames_per_cpu_s": round(len(images) / cpu, 2),
        }
    return out


def bench_vggish(repeats: int) -> dict:
    from nextvlad.extraction.vggish import build_vggish

    model = build_vggish()
    patches = np.random.default_rng(0).normal(size=(32, 96, 64)).astype(np.float32)
    cpu = time.process_time()
    seconds = best_seconds(lambda: model.predict_on_batch(patches), repeats=repeats)
    cpu = (time.process_time() - cpu) / (repeats + 1)
    return {
        "audio_s_per_s": round(32 / seconds, 1),
        "audio_s_per_cpu_s": round(32 / cpu, 1),
        "gflop_per_s_of_audio": round(model_flops(model) / 1e9, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="length of the 720p test clip (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    parser.add_argument("--output", default="runs/bench_extract", help="folder for the generated clip")
    parser.add_argument("--skip_decode", action="store_true", help="only the backbone and VGGish")
    parser.add_argument(
        "--chunk_sweep",
        help="comma-separated chunk sizes: only measure Inception-v3 at each (e.g. 8,16,32,64)",
    )
    args = parser.parse_args()
    result: dict = {"machine": machine_description()}
    if args.chunk_sweep:
        result["chunks"] = bench_chunks([int(c) for c in args.chunk_sweep.split(",")], args.repeats)
        print(json.dumps(result))
        return 0
    if not args.skip_decode:
        os.makedirs(args.output, exist_ok=True)
        clip = os.path.join(args.output, f"clip720p_{args.seconds}s.mp4")
        if not os.path.exists(clip):
            print(f"writing {clip} ({args.seconds} s, 1280x720, 30 fps, H.264)...", flush=True)
            write_clip(
                clip,
                duration=args.seconds,
                fps=30,
                size=(720, 1280),
                picture=_moving_picture((720, 1280)),
                options={"preset": "fast", "crf": "23"},
            )
        result["clip_mb"] = round(os.path.getsize(clip) / 1e6, 1)
        result["decode"] = bench_decode(clip, args.seconds, args.repeats)
        print(json.dumps(result), flush=True)
    result["backbone"] = bench_backbone(args.repeats)
    result["vggish"] = bench_vggish(args.repeats)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
