"""Input-pipeline throughput for frame-level YouTube-8M data, next to the model it has to feed.

Writes a synthetic frame-level corpus (random uint8 frames, lengths uniform in [--min_frames,
--max_frames]) with the fast record writer into a temporary directory, then measures:

- writer: videos/s through `frame_example_bytes` (encode only) and end to end (+ TFRecord write),
- `parse_frame_example` records/s (the record-at-a-time parser the Beam pipelines use),
- `make_dataset` records/s over `--epochs` epochs (parse + dequantize + pad to the batch's longest video,
  batch 64), reading files that sit in the page cache: this is the CPU cost, not the disk's,
- forward videos/s of the `paper` model on full-length [B, 300] inputs when `nextvlad.build_model` is
  available, and the ratio reader / model (goal: >= 20x, i.e. on the same cores, parsing the input
  takes under 5% of the time the forward pass does).

Run from the repository root:

    .venv/bin/python benchmarks/bench_reader.py --videos 2000 --epochs 3

`--skip_model` measures the reader alone; `--help` lists the knobs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import best_seconds, machine_description  # noqa: E402

from nextvlad import yt8m  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--videos", type=int, default=2000, help="synthetic videos to write (default 2000)")
    p.add_argument("--files", type=int, default=8, help="TFRecord shards (default 8)")
    p.add_argument("--min_frames", type=int, default=100, help="shortest video (default 100)")
    p.add_argument("--max_frames", type=int, default=300, help="longest video (default 300)")
    p.add_argument("--batch_size", type=int, default=64, help="reader batch size (default 64)")
    p.add_argument(
        "--epochs", type=int, default=3, help="reader epochs, each followed by a model timing (default 3)"
    )
    p.add_argument("--parse_records", type=int, default=500, help="records timed through parse_frame_example")
    p.add_argument(
        "--model_preset", default="paper", help="ModelConfig preset for the forward pass (default paper)"
    )
    p.add_argument("--model_batch", type=int, default=64, help="videos per forward call (default 64)")
    p.add_argument(
        "--model_steps",
        type=int,
        default=3,
        help="timed forward calls after one warm-up; the fastest counts (default 3)",
    )
    p.add_argument("--skip_model", action="store_true", help="measure the reader only")
    p.add_argument(
        "--workdir", default=None, help="where to write the corpus (default: a temp dir, removed after)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def write_corpus(args: argparse.Namespace, root: str) -> tuple[float, float, int]:
    """Write the corpus; returns (encode seconds, total seconds, frames written)."""
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(args.min_frames, args.max_frames + 1, size=args.videos)
    encode_s = 0.0
    per_file = np.array_split(np.arange(args.videos), args.files)

    def records(indices):
        nonlocal encode_s
        for i in indices:
            n = int(lengths[i])
            frames = np.frombuffer(rng.bytes(n * (yt8m.RGB_SIZE + yt8m.AUDIO_SIZE)), np.uint8)
            rgb_q = frames[: n * yt8m.RGB_SIZE].reshape(n, yt8m.RGB_SIZE)
            audio_q = frames[n * yt8m.RGB_SIZE :].reshape(n, yt8m.AUDIO_SIZE)
            labels = rng.choice(yt8m.NUM_CLASSES, size=3, replace=False)
            start = time.perf_counter()
            record = yt8m.frame_example_bytes(f"syn{i:07d}", labels, rgb_q, audio_q)
            encode_s += time.perf_counter() - start
            yield record

    start = time.perf_counter()
    for k, indices in enumerate(per_file):
        yt8m.write_tfrecords(os.path.join(root, f"train{k:04d}.tfrecord"), records(indices))
    return encode_s, time.perf_counter() - start, int(lengths.sum())


def time_parser(pattern: str, n: int) -> float:
    records = yt8m.peek_records(pattern, n=n)
    start = time.perf_counter()
    for r in records:
        yt8m.parse_frame_example(r)
    return len(records) / (time.perf_counter() - start)


def reader_epoch(ds: tf.data.Dataset) -> float:
    """Records/s of one full pass over `ds`."""
    start, count = time.perf_counter(), 0
    for features, _labels in ds:
        count += int(features["num_frames"].shape[0])
    return count / (time.perf_counter() - start)


def model_timer(args: argparse.Namespace) -> tuple[Callable[[], float] | None, str]:
    """A function returning forward videos/s of the model on full-length inputs, or (None, why not)."""
    try:
        from nextvlad import ModelConfig, build_model
    except ImportError as e:
        return None, f"skipped: nextvlad.ModelConfig/build_model not importable ({e})"
    model = build_model(ModelConfig.preset(args.model_preset))
    rng = np.random.default_rng(args.seed)
    b, t = args.model_batch, yt8m.MAX_FRAMES
    inputs = {
        "rgb": tf.constant(yt8m.dequantize(rng.integers(0, 256, (b, t, yt8m.RGB_SIZE), dtype=np.uint8))),
        "audio": tf.constant(yt8m.dequantize(rng.integers(0, 256, (b, t, yt8m.AUDIO_SIZE), dtype=np.uint8))),
        "num_frames": tf.fill([b], tf.constant(t, tf.int32)),
    }
    model.predict_on_batch(inputs)  # warm-up: tracing, allocation

    def videos_per_second() -> float:
        return b / best_seconds(lambda: model.predict_on_batch(inputs), repeats=args.model_steps, warmup=0)

    return videos_per_second, f"{model.count_params():,} params, batch {b} x {t} frames"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 1 <= args.min_frames <= args.max_frames:
        raise SystemExit(f"need 1 <= --min_frames <= --max_frames, got {args.min_frames}, {args.max_frames}")
    print(f"machine: {machine_description()}")
    timer, note = (None, "skipped (--skip_model)") if args.skip_model else model_timer(args)

    root = args.workdir or tempfile.mkdtemp(prefix="yt8m-bench-")
    os.makedirs(root, exist_ok=True)
    try:
        encode_s, write_s, frames = write_corpus(args, root)
        os.sync()  # so that write-back of the fresh corpus does not compete with the timed reads
        pattern = os.path.join(root, "train*.tfrecord")
        size_mb = sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root)) / 1e6
        print(
            f"corpus: {args.videos} videos, {frames / args.videos:.0f} frames/video on average, "
            f"{args.files} files, {size_mb:.0f} MB in {root}"
        )
        print(
            f"writer: {args.videos / encode_s:,.0f} videos/s encode only; "
            f"{args.videos / write_s:,.0f} videos/s with random frames + TFRecord write"
        )
        counted = yt8m.count_records(pattern)
        if counted != args.videos:
            raise SystemExit(f"wrote {args.videos} videos but count_records found {counted}")

        parse_rate = time_parser(pattern, args.parse_records)
        print(f"parse_frame_example: {parse_rate:,.0f} records/s (one process)")

        # Reader epochs and model timings alternate, so load from other processes hits both alike;
        # the best of each is kept.
        ds = yt8m.make_dataset(pattern, batch_size=args.batch_size, max_frames=yt8m.MAX_FRAMES)
        reader_rates, model_rates = [], []
        for epoch in range(1, args.epochs + 1):
            reader_rates.append(reader_epoch(ds))
            line = f"epoch {epoch}: make_dataset {reader_rates[-1]:,.0f} records/s (batch {args.batch_size})"
            if timer is not None:
                model_rates.append(timer())
                line += f"; model '{args.model_preset}' forward {model_rates[-1]:,.1f} videos/s"
            print(line)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    reader_rate = max(reader_rates)
    print(f"reader (best epoch): {reader_rate:,.0f} records/s")
    if timer is None:
        print(f"model: {note}")
        return
    model_rate = max(model_rates)
    print(f"model '{args.model_preset}' forward (best): {model_rate:,.1f} videos/s ({note})")
    ratio = reader_rate / model_rate
    verdict = "meets the 20x goal" if ratio >= 20 else "below the 20x goal"
    print(f"reader / model: {ratio:,.1f}x ({verdict})")


if __name__ == "__main__":
    main()
