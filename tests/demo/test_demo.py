"""`make demo`'s driver, end to end on a tiny corpus: every artefact the report promises exists."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[2]  # `python -m demo` runs from the repository root


def test_demo_runs_every_step_and_reuses_its_outputs(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "demo", f"--output={out}", "--num_videos=240", "--epochs=1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    for step in ("corpus", "train", "evaluate", "score", "index", "search"):
        assert f"=== {step}" in first.stdout
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["num_videos"] == 30 and 0.0 <= evaluation["gap"] <= 1.0
    rows = sum(pq.read_metadata(p).num_rows for p in (out / "scores").glob("scores-*.parquet"))
    assert rows == 240
    assert (out / "index" / "index.json").exists()
    for picture in ("training_curve.png", "evaluation.png", "embeddings_2d.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    assert "Held-out GAP@20" in first.stdout and "rank" in first.stdout

    # A second run reuses the corpus, the model, the scores and the index.
    second = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    for step in ("corpus", "train", "score", "index"):
        assert f"=== {step}: reusing" in second.stdout
