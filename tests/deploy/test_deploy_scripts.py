"""The deploy scripts, run offline: the flags they pass must build a valid Dataflow pipeline / job.

`pipelines.score --dry_run` checks every flag (ours and Beam's), validates the options for the
DataflowRunner, builds the whole transform graph and stops before submitting anything, so a typo in
`deploy/score_dataflow.sh` fails here rather than on a user's cloud bill.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scoring_data import save_tiny_model

from nextvlad.yt8m import frame_example_bytes, write_tfrecords

pytest_plugins = ["emulators"]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def corpus_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    rng = np.random.default_rng(0)
    records = [
        frame_example_bytes(
            f"v{i}",
            [i % 7],
            rng.integers(0, 256, (5, 1024), np.uint8),
            rng.integers(0, 256, (5, 128), np.uint8),
        )
        for i in range(4)
    ]
    write_tfrecords(str(root / "part-0.tfrecord"), records)
    model = save_tiny_model(root / "model.keras")
    return root, model


def _env(**values: str) -> dict:
    return {**os.environ, "PYTHON": shlex.quote(sys.executable), **values}


def _score_env(root: Path, model: Path, bucket: str) -> dict:
    # Beam's Dataflow option validation looks the temp bucket up (soft-delete policy): the local GCS
    # emulator answers it, offline.
    return _env(
        PROJECT="my-project",
        BUCKET=bucket,
        INPUT=str(root / "*.tfrecord"),
        MODEL=str(model),
        OUTPUT=str(root / "out" / "scores"),
        JOB_NAME="nextvlad-score-test",
    )


def test_score_dataflow_script_builds_a_valid_gpu_pipeline(corpus_and_model, gcs_emulator):
    root, model = corpus_and_model
    bucket = f"gs://{gcs_emulator.bucket}"
    result = subprocess.run(
        ["bash", str(DEPLOY / "score_dataflow.sh"), "--dry_run"],
        env=_score_env(root, model, bucket),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "nothing was submitted" in out
    for transform in ("ReadFrameRecords", "ParseRecords", "RunInference", "FormatRows", "WriteParquet"):
        assert transform in out
    assert "--runner=DataflowRunner" in out
    assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" in out
    assert "--sdk_container_image=us-central1-docker.pkg.dev/my-project/nextvlad/worker:latest" in out
    assert f"--temp_location={bucket}/tmp" in out and "--max_num_workers=20" in out
    assert "use_runner_v2" in out


def test_a_typo_in_a_dataflow_flag_fails_the_dry_run(corpus_and_model, gcs_emulator):
    root, model = corpus_and_model
    result = subprocess.run(
        ["bash", str(DEPLOY / "score_dataflow.sh"), "--dry_run", "--max_num_wrkers=5"],
        env=_score_env(root, model, f"gs://{gcs_emulator.bucket}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "unknown flag(s) --max_num_wrkers" in result.stderr


def test_dataflow_options_are_validated_for_the_runner(corpus_and_model, gcs_emulator):
    root, model = corpus_and_model
    env = _score_env(root, model, f"gs://{gcs_emulator.bucket}")
    env["JOB_NAME"] = "Score_Run_1"  # Dataflow job names are lower-case letters, digits and dashes
    result = subprocess.run(
        ["bash", str(DEPLOY / "score_dataflow.sh"), "--dry_run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "DataflowRunner rejects the pipeline options" in result.stderr


def test_score_script_names_a_missing_variable():
    result = subprocess.run(
        ["bash", str(DEPLOY / "score_dataflow.sh")], env=_env(PROJECT="p"), capture_output=True, text=True
    )
    assert result.returncode != 0 and "set BUCKET" in result.stderr


def _argv_recorder(tmp_path: Path) -> str:
    """An executable that prints the arguments it was given, as JSON (stands in for python/gcloud)."""
    script = tmp_path / "record_argv"
    script.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    return str(script)


def test_index_script_flags_are_all_known_to_the_index_job(tmp_path):
    env = _env(PROJECT="p", BUCKET="gs://b", EMBEDDINGS="gs://b/s-*.parquet", OUTPUT="gs://b/index")
    env["PYTHON"] = _argv_recorder(tmp_path)
    result = subprocess.run(
        ["bash", str(DEPLOY / "index_dataflow.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)[2:]  # drop "-m pipelines.index"
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.index import parse_known_args

    config, beam_args = parse_known_args(argv)
    assert config.dim == 256 and config.index_type == "ivf"
    options = PipelineOptions(beam_args)
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    assert not unknown


def test_vertex_script_passes_only_flags_the_trainer_knows(tmp_path):
    env = _env(PROJECT="p", TRAIN_DATA="gs://b/train*.tfrecord", MODEL_DIR="gs://b/models/run1")
    env["GCLOUD"] = _argv_recorder(tmp_path)
    result = subprocess.run(
        ["bash", str(DEPLOY / "train_vertex.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    assert argv[:3] == ["ai", "custom-jobs", "create"]
    assert "--command=python" in argv
    trainer_args = next(a for a in argv if a.startswith("--args="))[len("--args=") :].split(",")
    assert trainer_args[:2] == ["-m", "trainer.train"]
    from trainer.train import build_parser

    parsed = build_parser().parse_args(trainer_args[2:])
    assert parsed.distribution == "mirrored" and parsed.mixed_precision and parsed.preset == "final"
    assert parsed.model_dir == "gs://b/models/run1" and parsed.batch_size == 160
