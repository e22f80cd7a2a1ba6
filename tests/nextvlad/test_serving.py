"""The serving contract across entry points: a model trained with reverse whitening is evaluated and
scored correctly with no preprocessing flag, and a model saved under the old float-input contract is
refused with the command that re-exports it, which then scores exactly as the old model did."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from legacy import legacy_parser
from scoring_data import TINY, decode_frame_record, read_rows

from nextvlad import ModelConfig, records
from nextvlad.serving import InvalidModelError, inspect_model
from nextvlad.synthetic import generate_corpus
from pipelines import score
from trainer import evaluate as ev
from trainer import evaluation, training
from trainer.config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = TINY["num_classes"]


def _reference_dequantize(q: np.ndarray) -> np.ndarray:
    """The dataset reader's formula, written out: q · 4/255 + 4/512 − 2."""
    return q.astype(np.float64) * (4.0 / 255.0) + (4.0 / 512.0 - 2.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("serving")
    generate_corpus(
        folder, num_videos=90, num_classes=NUM_CLASSES, shards=3, seed=3, min_frames=6, max_frames=30
    )
    # Eigenvalues spread over two orders of magnitude, so that reverse whitening changes the scores a lot.
    eigenvals = np.geomspace(0.01, 4.0, 2048, dtype=np.float32)[::-1].reshape(2048, 1)
    np.save(folder / "eigenvals.npy", eigenvals)
    return {
        "train": str(folder / "synthetic-0000[01]-of-00003.tfrecord"),
        "eval": str(folder / "synthetic-00002-of-00003.tfrecord"),
        "eigenvals": str(folder / "eigenvals.npy"),
    }


@pytest.fixture(scope="module")
def whitened_model(corpus, tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("whitened") / "model"
    config = ModelConfig.preset("demo", **TINY, max_frames=20)
    train_config = TrainConfig(
        train_data=corpus["train"],
        model_dir=str(model_dir),
        batch_size=16,
        max_steps=4,
        pca_eigenvals=corpus["eigenvals"],
    )
    training.train(config, train_config)
    return model_dir


def _expected_predictions(model_dir: Path, pattern: str, *, max_frames: int) -> dict[str, np.ndarray]:
    """`model.predict` on each record's frames, decoded by the test's own proto decoder."""
    model = keras.saving.load_model(model_dir / "model.keras")
    expected = {}
    for path in sorted(Path(pattern).parent.glob(Path(pattern).name)):
        for data in records.iter_tfrecords(str(path)):
            video = decode_frame_record(data, max_frames=max_frames)
            inputs = {
                "rgb": video["rgb"][None],
                "audio": video["audio"][None],
                "num_frames": np.array([video["num_frames"]], np.int32),
            }
            expected[video["id"]] = np.asarray(model.predict_on_batch(inputs)["predictions"][0])
    return expected


def test_a_reverse_whitened_model_is_evaluated_and_scored_with_no_extra_flag(
    corpus, whitened_model, tmp_path
):
    info = inspect_model(str(whitened_model))
    assert info.reverse_whitening and info.max_frames == 20 and info.input_format == "frame"
    # The scale is a weight of the saved model: the paper's sqrt(eigenvalue) + 1e-4 of the rgb rows.
    model = keras.saving.load_model(whitened_model / "model.keras")
    scale = np.asarray(model.get_layer("preprocessing").rgb_scale)
    eigenvals = np.load(corpus["eigenvals"])[:1024, 0]
    np.testing.assert_allclose(scale, np.sqrt(eigenvals) + 1e-4, rtol=1e-6)
    expected = _expected_predictions(whitened_model, corpus["eval"], max_frames=20)

    # trainer.evaluate: no --pca_eigenvals and no --max_frames exist to forget.
    loaded, info = ev.load_serving_model(str(whitened_model))
    got = evaluation.predict_records(loaded, info, corpus["eval"], progress=False)
    assert sorted(got.ids) == sorted(expected)
    for video_id, row in zip(got.ids, got.scores, strict=True):
        np.testing.assert_allclose(row, expected[video_id], atol=1e-5)

    # pipelines.score: the same scores in the rows.
    output = tmp_path / "scores"
    score.run(
        [
            "--runner=DirectRunner",
            f"--input={corpus['eval']}",
            f"--model={whitened_model}",
            f"--output={output}",
            f"--top_k={NUM_CLASSES}",
        ]
    )
    rows = read_rows(f"{output}-*.parquet")
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for row in rows:
        np.testing.assert_allclose(
            row["top_scores"], expected[row["id"]][row["top_classes"]], atol=1e-5, err_msg=row["id"]
        )


@pytest.mark.parametrize(
    ("flag", "owner"),
    [("--pca_eigenvals=eigenvals.npy", "reverse whitening"), ("--max_frames=300", "frame limit")],
)
def test_scoring_flags_for_preprocessing_are_refused_with_the_reason(whitened_model, tmp_path, flag, owner):
    args = [f"--input={tmp_path}/*.tfrecord", f"--model={whitened_model}", f"--output={tmp_path / 'x'}", flag]
    with pytest.raises(
        score.ScoreSetupError, match=f"{flag.split('=')[0]} is no longer a scoring flag.*{owner}"
    ):
        score.run(args)


# ------------------------------------------------------------------------------------------------
# Models saved under the old contract (float32 dequantized inputs, preprocessing outside the model)
# ------------------------------------------------------------------------------------------------


def _save_legacy_model(model_dir: Path, config: ModelConfig) -> keras.Model:
    """A serving model as trainer.train wrote them before models took uint8 frames: float inputs, the
    frame mask taken from num_frames, no preprocessing layer, and the same layer names."""
    keras.utils.set_random_seed(7)
    model = legacy_parser.float_input_model(config)
    # Non-trivial BatchNorm statistics, so that a weight copied to the wrong place would show.
    for layer in model.layers:
        for weight in layer.weights:
            if "moving" in weight.path:
                weight.assign(np.random.default_rng(len(weight.path)).uniform(0.5, 1.5, weight.shape))
    model_dir.mkdir(parents=True)
    model.save(model_dir / "model.keras")
    config.to_json(model_dir / "config.json")
    return model


def test_an_old_model_is_refused_with_the_reexport_command_which_then_scores_as_it_did(corpus, tmp_path):
    config = ModelConfig.preset("demo", **TINY, max_frames=25)
    model_dir = tmp_path / "old"
    legacy = _save_legacy_model(model_dir, config)

    for entry_point in (lambda: inspect_model(str(model_dir)), lambda: ev.load_serving_model(str(model_dir))):
        with pytest.raises((InvalidModelError, ValueError), match=rf"trainer.export --model_dir {model_dir}"):
            entry_point()
    with pytest.raises(InvalidModelError, match="saved before models owned their preprocessing"):
        score.run([f"--input={corpus['eval']}", f"--model={model_dir}", f"--output={tmp_path / 's'}"])

    result = subprocess.run(
        [sys.executable, "-m", "trainer.export", "--model_dir", str(model_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "re-exported" in result.stdout and (model_dir / "model.pre-uint8.keras").exists()
    assert json.loads((model_dir / "config.json").read_text())["reverse_whitening"] is False

    # The old model fed the old way (dequantized floats, by the dataset's formula) vs the re-exported one
    # scored by the pipeline from the records.
    output = tmp_path / "scores"
    score.run(
        [
            "--runner=DirectRunner",
            f"--input={corpus['eval']}",
            f"--model={model_dir}",
            f"--output={output}",
            f"--top_k={NUM_CLASSES}",
        ]
    )
    rows = {row["id"]: row for row in read_rows(f"{output}-*.parquet")}
    assert len(rows) == 30
    for data in records.iter_tfrecords(corpus["eval"]):
        video = decode_frame_record(data, max_frames=25)
        old = legacy.predict_on_batch(
            {
                "rgb": _reference_dequantize(video["rgb"])[None].astype(np.float32),
                "audio": _reference_dequantize(video["audio"])[None].astype(np.float32),
                "num_frames": np.array([video["num_frames"]], np.int32),
            }
        )
        row = rows[video["id"]]
        np.testing.assert_allclose(
            row["top_scores"], np.asarray(old["predictions"][0])[row["top_classes"]], atol=1e-5
        )
        np.testing.assert_allclose(row["embedding"], np.asarray(old["embedding"][0]), atol=1e-5)


def test_reexporting_a_current_model_is_refused(whitened_model):
    from trainer.export import export

    with pytest.raises(ValueError, match="already takes the records' features as stored"):
        export(str(whitened_model))
