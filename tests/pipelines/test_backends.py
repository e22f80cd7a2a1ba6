"""The scoring path on Keras's other backends: no TensorFlow imported, the same rows as TensorFlow's."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scoring_data import good_frame_records, read_dead_letters, read_rows, save_tiny_model, write_tfrecords

from pipelines import score

REPO_ROOT = Path(__file__).resolve().parents[2]

# Scores a corpus in a fresh process on the given backend and reports which heavy frameworks it imported.
_CHILD = textwrap.dedent(
    """
    import json, sys
    from pipelines import score
    summary = score.run(sys.argv[1:])
    print(json.dumps({
        "videos": summary.videos_scored,
        "tensorflow": "tensorflow" in sys.modules,
        "backend": __import__("keras").backend.backend(),
    }))
    """
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("backends")
    save_tiny_model(root / "model" / "model.keras", max_frames=25)
    records = good_frame_records(np.random.default_rng(4), 16, prefix="b")
    write_tfrecords(root / "data" / "part-0.tfrecord", list(records.values()))
    return {"root": root, "model": root / "model", "pattern": str(root / "data" / "part-0.tfrecord")}


def _args(corpus: dict, output: Path) -> list[str]:
    return [
        "--runner=DirectRunner",
        f"--input={corpus['pattern']}",
        f"--model={corpus['model']}",
        f"--output={output}",
        "--top_k=7",
        "--batch_size=5",
    ]


@pytest.fixture(scope="module")
def tensorflow_rows(corpus) -> list[dict]:
    output = corpus["root"] / "tf" / "scores"
    score.run(_args(corpus, output))
    return read_rows(f"{output}-*.parquet")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_scoring_runs_without_tensorflow_and_matches_its_rows(corpus, tensorflow_rows, backend):
    output = corpus["root"] / backend / "scores"
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *_args(corpus, output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"videos": 16, "tensorflow": False, "backend": backend}
    rows = read_rows(f"{output}-*.parquet")
    assert read_dead_letters(str(output)) == []
    assert [r["id"] for r in rows] == [r["id"] for r in tensorflow_rows]
    for got, expected in zip(rows, tensorflow_rows, strict=True):
        assert got["num_frames"] == expected["num_frames"] and got["labels"] == expected["labels"]
        # Same top classes unless two scores are within the tolerance of each other.
        np.testing.assert_allclose(got["top_scores"], expected["top_scores"], atol=1e-4)
        np.testing.assert_allclose(got["embedding"], expected["embedding"], atol=1e-4)
        scores = dict(zip(expected["top_classes"], expected["top_scores"], strict=True))
        np.testing.assert_allclose([scores[c] for c in got["top_classes"]], got["top_scores"], atol=1e-4)
