"""Shared benchmark helpers: a backend-native matmul rate, timing, and a machine description.

Throughput numbers on a shared machine are noisy; what the benchmarks report are ratios measured
in one run (the model's FLOP/s against this machine's measured matmul FLOP/s), interleaving the
two measurements and keeping the best of several repeats of each.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs one scoring job in a fresh process; prints its summary, CPU time, peak RSS and the frames it padded
# as JSON on the last line. Peak RSS is VmHWM (this process since exec): getrusage's ru_maxrss would also
# count the parent's memory at fork time. Worker subprocesses (multi_processing) are covered by
# RUSAGE_CHILDREN. `{prelude}` runs first (e.g. to put the old parser into the pipeline).
_SCORING_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {benchmarks!r})
cpu = time.process_time()
{prelude}
from pipelines import handler, score

padding = {{"frames": 0, "slots": 0}}
pad = handler.pad_batch

def counting_pad_batch(examples, input_format, **options):
    batch = pad(examples, input_format, **options)
    if "num_frames" in batch:
        padding["frames"] += int(batch["num_frames"].sum())
        padding["slots"] += int(batch["rgb"].shape[0] * batch["rgb"].shape[1])
    return batch

handler.pad_batch = counting_pad_batch

def peak_kib():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1])

summary = score.run(sys.argv[1:])
cpu = time.process_time() - cpu
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{
    "videos": summary.videos_scored, "records": summary.records_read, "seconds": summary.seconds,
    "batches": summary.batches, "cpu_seconds": cpu + children.ru_utime + children.ru_stime,
    "peak_rss_mib": max(peak_kib(), children.ru_maxrss) / 1024,
    "frames": padding["frames"], "padded_slots": padding["slots"],
}}))
"""


def best_seconds(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> float:
    """The fastest of `repeats` timed calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops_per_second(*, size: int = 4096, dtype: str = "float32", repeats: int = 5) -> float:
    """Measured FLOP/s of a square `size`×`size` matmul in the active Keras backend's own library.

    The same library (and thread pool) the model runs on, so the ratio compares like with like;
    the default size is large enough to run near the machine's peak.
    """
    import keras
    import numpy as np

    backend = keras.backend.backend()
    a = np.random.default_rng(0).normal(size=(size, size)).astype("float32")
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(tf.constant(a, dtype=dtype))  # a Variable: a constant would be folded away
        matmul = tf.function(lambda: tf.linalg.matmul(x, x))

        def step():
            return matmul().numpy()

    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(a, dtype=dtype)
        matmul = jax.jit(lambda v: v @ v)

        def step():
            return matmul(x).block_until_ready()

    elif backend == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        x = torch.as_tensor(a, device=device).to(getattr(torch, dtype))

        def step():
            out = x @ x
            if device == "cuda":
                torch.cuda.synchronize()
            return out

    else:  # pragma: no cover - numpy backend etc.
        x = a.astype(dtype)

        def step():
            return x @ x

    seconds = best_seconds(step, repeats=repeats, warmup=2)
    return 2 * size**3 / seconds


def score_in_subprocess(argv: Sequence[str], *, prelude: str = "", env: dict | None = None) -> dict:
    """Runs `pipelines.score` with `argv` in a fresh Python process (same interpreter, repository root).

    Args:
        argv: the scoring job's flags.
        prelude: Python statements run in the child before the pipeline is imported (CPU time counts).
        env: environment for the child (default: this process's).

    Returns:
        `videos`, `records`, `seconds` (the pipeline's own timer), `batches`, `cpu_seconds` (the whole
        process, imports included), `peak_rss_mib`, `frames` (real frames scored) and `padded_slots`
        (frame slots of the padded batches: `1 - frames / padded_slots` is the padded fraction).
    """
    code = _SCORING_CHILD.format(benchmarks=str(REPO_ROOT / "benchmarks"), prelude=prelude)
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode:
        raise RuntimeError(f"scoring run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Frame-count mixes for synthetic corpora: (share of videos, fewest frames, most frames) per part.
# `yt8m`: YouTube-8M keeps videos of 120-500 s and stores at most 300 one-second frames, so most videos
# have 120-299 frames, everything of 300 s or more has exactly 300, and a tail is shorter (~220 on average).
LENGTH_MIXES: dict[str, tuple[tuple[float, int, int], ...]] = {
    "yt8m": ((0.1, 10, 119), (0.6, 120, 299), (0.3, 300, 300)),
}


def write_length_mix_corpus(
    output_dir: str | os.PathLike, *, mix: str, num_videos: int, shards: int, num_classes: int, seed: int = 0
) -> list[str]:
    """A synthetic frame-level corpus whose video lengths follow `LENGTH_MIXES[mix]`, in arrival order.

    Each part of the mix is generated by `nextvlad.synthetic` (its own seed and id prefix), then the
    parts' records are interleaved in a seeded random order and written as `shards` contiguous slices, so
    that every shard (and every batch read in file order) holds the same mix.

    Returns:
        The shard paths, in order.
    """
    import itertools
    import shutil
    import tempfile

    import numpy as np

    from nextvlad import records, synthetic

    parts = LENGTH_MIXES[mix]
    order = np.random.default_rng(seed).choice(len(parts), size=num_videos, p=[p[0] for p in parts])
    os.makedirs(output_dir, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="mix_", dir=output_dir))
    try:
        streams = {}
        for j, (_, low, high) in enumerate(parts):
            count = int((order == j).sum())
            if count:
                corpus = synthetic.generate_corpus(
                    staging / f"part{j}",
                    num_videos=count,
                    num_classes=num_classes,
                    shards=1,
                    seed=seed + j,
                    min_frames=low,
                    max_frames=high,
                    prefix=f"part{j}",
                )
                streams[j] = records.iter_tfrecords(corpus["files"][0])
        interleaved = (next(streams[j]) for j in order)
        files = []
        for shard in range(shards):
            begin, end = shard * num_videos // shards, (shard + 1) * num_videos // shards
            path = synthetic.shard_path(os.fspath(output_dir), "synthetic", shard, shards)
            records.write_tfrecords(path, itertools.islice(interleaved, end - begin))
            files.append(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def machine_description() -> str:
    """One line: CPU model, cores visible, Keras backend and its accelerator if any."""
    import keras

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    accelerator = "CPU"
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            accelerator = torch.cuda.get_device_name(0)
    elif keras.backend.backend() == "jax":
        import jax

        accelerator = str(jax.devices()[0].device_kind)
    backend = keras.backend.backend()
    return f"{cpu}, {os.cpu_count()} cores visible, Keras {keras.__version__} on {backend} ({accelerator})"
