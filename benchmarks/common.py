"""Shared benchmark helpers: a backend-native matmul rate, timing, and a machine description.

Throughput numbers on a shared machine are noisy; what the benchmarks report are ratios measured
in one run (the model's FLOP/s against this machine's measured matmul FLOP/s), interleaving the
two measurements and keeping the best of several repeats of each.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable


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
