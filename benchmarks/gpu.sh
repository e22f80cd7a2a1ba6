#!/usr/bin/env bash
# The GPU kit: model forward speed and the scoring pipeline on one GPU, with Keras on JAX, no TensorFlow.
#
# On a machine with PyPI access, fetch the Python 3.12 wheels that the GPU machine lacks into .whl/
# (git-ignored; 19 wheels, 38 MiB):
#
#     bash benchmarks/gpu.sh download
#
# On the GPU machine (one H100/H200, Python 3.12 with JAX and PyTorch, no TensorFlow, no network), from the
# repository root with .whl/ beside it (meant to finish in under 8 minutes; not timed on a GPU yet):
#
#     bash benchmarks/gpu.sh
#
# It installs the wheels with --no-deps into $SITE (default /tmp/site), checks the imports (and that
# TensorFlow is not among them) first, then writes into $RESULTS (default $OUT, else runs/gpu):
#   gpu_forward.json / .log  benchmarks/bench_gpu.py: `paper` and `final` at T=300, float32 and bfloat16,
#                            batches 256/512/1024: videos/s, bf16 and fp32 matmul TFLOP/s, model ÷ matmul;
#   gpu_score.json / .log    benchmarks/bench_score.py: `pipelines.score` on the DirectRunner over a
#                            synthetic corpus with YouTube-8M's length mix (`paper`, --precision mixed):
#                            videos/s and pipeline ÷ bare model, length buckets (default) vs arrival order.
#
# CPU check of the same script (tiny sizes, any Python with JAX and no TensorFlow):
#
#     GPU_KIT_TINY=1 PYTHON=/tmp/notf/bin/python WHEELS=/tmp/whl311 bash benchmarks/gpu.sh
#
# (WHEELS: the same wheel list downloaded for that Python: `PY_VERSION=3.11 WHEELS=/tmp/whl311 bash
# benchmarks/gpu.sh download`.)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
RESULTS=${RESULTS:-${OUT:-runs/gpu}}
PY_VERSION=${PY_VERSION:-3.12}

# What the scoring path needs beyond the GPU machine's own packages (numpy, jax, pyarrow, grpcio, h5py,
# ml-dtypes, absl-py, rich, tqdm, requests, pyyaml, python-dateutil, packaging, pillow, sortedcontainers,
# typing-extensions, pyparsing, cloudpickle are there). Versions as in this project's pinned venv. protobuf
# is carried because Beam 2.77 needs protobuf < 7, whatever the machine has.
PACKAGES=(
    keras==3.15.1 namex==0.1.0 optree==0.20.0
    apache-beam==2.77.0 fastavro==1.13.1 fasteners==0.20 httplib2==0.32.1 jsonpickle==4.1.4
    objsize==0.7.1 proto-plus==1.29.0 protobuf==6.33.6 pytz==2026.6 zstandard==0.25.0 beartype==0.22.9
    dill==0.4.1 orjson==3.13.0 cryptography==50.0.2 cffi==2.1.1
    google-crc32c==1.9.0
)

if [[ ${1:-} == download ]]; then
    mkdir -p "$WHEELS"
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
        manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp "${platforms[@]}" -d "$WHEELS" "${PACKAGES[@]}"
    du -sh "$WHEELS"
    exit 0
fi

if [[ -n ${GPU_KIT_TINY:-} ]]; then
    forward_args=(--tiny)
    score_args=(--videos 8 --scale 2 --batch_size 4 --repeats 1)
else
    forward_args=()
    score_args=(--videos 2048 --scale 4 --batch_size 512 --repeats 1)
fi

started=$SECONDS
mkdir -p "$RESULTS"
echo "== installing ${WHEELS}/*.whl into $SITE (no dependencies)"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax
# Each scoring process takes GPU memory as it needs it, not 75% up front, so that the bare model and the
# pipeline's process can share the card.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1

echo "== checking imports"
"$PYTHON" - <<'EOF'
import sys

import apache_beam
import jax
import keras
import numpy
import pyarrow

import nextvlad.synthetic
import pipelines.score

print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, jax {jax.__version__}, keras "
      f"{keras.__version__} ({keras.backend.backend()}), apache-beam {apache_beam.__version__}, pyarrow "
      f"{pyarrow.__version__}; devices: {jax.devices()}")
if "tensorflow" in sys.modules:
    sys.exit("error: the scoring path imported TensorFlow")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== forward pass and matmul (benchmarks/bench_gpu.py)"
"$PYTHON" benchmarks/bench_gpu.py "${forward_args[@]}" --json "$RESULTS/gpu_forward.json" 2>&1 \
    | tee "$RESULTS/gpu_forward.log"

echo "== scoring pipeline vs bare model (benchmarks/bench_score.py)"
"$PYTHON" benchmarks/bench_score.py --preset paper --length_mix yt8m --precision mixed "${score_args[@]}" \
    --versus=--length_buckets=none \
    --workdir "${TMPDIR:-/tmp}/gpu_kit_score" --json "$RESULTS/gpu_score.json" 2>&1 \
    | grep -v "^I0000\|^WARNING: All log" | tee "$RESULTS/gpu_score.log"

echo "== done in $((SECONDS - started)) s; results in $RESULTS"
