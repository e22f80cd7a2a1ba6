"""trainer.train --segment_labels: rated segments as examples, a loss masked to the rated classes, a video
model's weights as the start, resuming, and segment mAP on held-out data."""

import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from scoring_data import random_frames, write_tfrecords
from segment_data import rated_record

from nextvlad import ModelConfig, build_model, serving_model, yt8m
from nextvlad.synthetic import generate_corpus
from trainer import train as tr
from trainer import training
from trainer.config import TrainConfig
from trainer.losses import binary_cross_entropy, nextvlad_loss
from trainer.training_model import load_initial_weights

NUM_CLASSES = 6
# The demo preset, shrunk so that a step takes milliseconds; no L2, so an unrated class gets no update.
TINY = dict(
    num_classes=NUM_CLASSES, cluster_size=4, groups=2, hidden_size=16, gating_reduction=4, l2_penalty=0.0
)


def test_masked_cross_entropy_by_hand():
    logits = np.array([[0.0, 2.0, -1.0]], np.float32)
    labels = np.array([[1.0, 0.0, 1.0]], np.float32)
    mask = np.array([[1.0, 0.0, 1.0]], np.float32)
    # -log σ(0) - log σ(-1) = log 2 + log(1 + e); the unrated middle class contributes nothing.
    expected = math.log(2) + math.log(1 + math.e)
    assert float(binary_cross_entropy(labels, logits, mask=mask)[0]) == pytest.approx(expected, rel=1e-6)
    loss = nextvlad_loss(labels, {"logits": logits}, mask=mask)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_segment_dataset_yields_each_rated_segment_with_its_targets_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    rgb, audio = random_frames(rng, 12)
    path = tmp_path / "rated.tfrecord"
    write_tfrecords(
        path,
        [
            rated_record("a", rgb, audio, [(10, 2, 1.0), (0, 4, 0.0), (10, 5, 0.0)]),
            rated_record("none", *random_frames(rng, 7), []),
        ],
    )
    features, targets, rated = next(iter(yt8m.make_segment_dataset(str(path), batch_size=8, num_classes=6)))
    assert features["num_frames"].numpy().tolist() == [2, 5]  # start 10: frames 10-11 only, then start 0
    np.testing.assert_array_equal(features["rgb"][0, :2], rgb[10:12])
    assert not features["rgb"][0, 2:].numpy().any()
    np.testing.assert_array_equal(features["audio"][1], audio[0:5])
    assert targets.numpy().tolist() == [[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert rated.numpy().tolist() == [[0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 1, 0]]


@pytest.fixture(scope="module")
def rated_corpus(tmp_path_factory) -> dict:
    """Segment-rated synthetic videos (classes 4 and 5 never labelled, so never rated) and a video model."""
    folder = tmp_path_factory.mktemp("rated")
    generate_corpus(
        folder, num_videos=96, num_classes=4, shards=2, min_frames=15, max_frames=30, segment_ratings=2
    )
    video_dir = folder / "video"
    config = ModelConfig.preset("demo", **TINY)
    keras.utils.set_random_seed(0)
    network = build_model(config)
    video_dir.mkdir()
    serving_model(network).save(video_dir / "model.keras")
    config.to_json(video_dir / "config.json")
    return {
        "train": str(folder / "synthetic-00000-of-00002.tfrecord"),
        "eval": str(folder / "synthetic-00001-of-00002.tfrecord"),
        "video": str(video_dir),
    }


def _fine_tune(corpus: dict, model_dir: Path, **overrides) -> dict:
    config = ModelConfig.from_json(Path(corpus["video"]) / "config.json")
    train_config = TrainConfig(
        train_data=corpus["train"],
        model_dir=str(model_dir),
        init_model=corpus["video"],
        segment_labels=True,
        **{"batch_size": 16, "verbose": False, **overrides},
    )
    return training.train(config, train_config)


def _predictions(model_path, inputs) -> np.ndarray:
    return keras.saving.load_model(model_path).predict(inputs, verbose=0)["predictions"]


def test_fine_tuning_starts_from_the_video_model_and_leaves_unrated_classes_alone(rated_corpus, tmp_path):
    features, _, _ = next(
        iter(yt8m.make_segment_dataset(rated_corpus["train"], batch_size=32, num_classes=6))
    )
    inputs = {name: value.numpy() for name, value in features.items()}
    before = _predictions(Path(rated_corpus["video"]) / "model.keras", inputs)

    config = ModelConfig.from_json(Path(rated_corpus["video"]) / "config.json")
    network = build_model(config)
    load_initial_weights(network, rated_corpus["video"])
    np.testing.assert_allclose(
        serving_model(network).predict(inputs, verbose=0)["predictions"], before, atol=1e-6
    )

    result = _fine_tune(rated_corpus, tmp_path / "seg", max_steps=6, eval_data=rated_corpus["eval"])
    after = _predictions(tmp_path / "seg" / "model.keras", inputs)
    assert not np.allclose(after[:, :4], before[:, :4], atol=1e-4)  # rated classes learned something
    # Classes 4 and 5 are never rated: their classifier weights got no gradient, so only the shared
    # layers below move their scores; their bias is exactly the video model's.
    video = keras.saving.load_model(Path(rated_corpus["video"]) / "model.keras")
    tuned = keras.saving.load_model(tmp_path / "seg" / "model.keras")
    head = [layer.name for layer in video.layers if layer.name.endswith("classifier")][0]
    (_, bias_before), (_, bias_after) = (
        video.get_layer(head).get_weights()[:2],
        tuned.get_layer(head).get_weights()[:2],
    )
    np.testing.assert_array_equal(bias_after[4:], bias_before[4:])
    assert not np.array_equal(bias_after[:4], bias_before[:4])
    # Held-out segment mAP is reported, and equals trainer.evaluate --segments on the saved model.
    saved = json.loads((tmp_path / "seg" / "metrics.json").read_text())
    assert 0 < saved["segment_map"] <= 1 and saved["segment_map"] == result["segment_map"]


def test_fine_tuning_resumes_like_every_training_run(rated_corpus, tmp_path):
    whole = _fine_tune(rated_corpus, tmp_path / "whole", max_steps=4, checkpoint_steps=2, steps_per_epoch=4)
    # The same run as if killed after its step-2 checkpoint: its files up to then, nothing after.
    halves = tmp_path / "halves"
    (halves / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "train_config.json", "checkpoints/ckpt-00000002.weights.h5"):
        shutil.copy(tmp_path / "whole" / name, halves / name)
    pointer = {"step": 2, "iterations": 2, "epoch": 0, "file": "ckpt-00000002.weights.h5"}
    (halves / "checkpoints" / "checkpoint.json").write_text(json.dumps(pointer))
    resumed = _fine_tune(rated_corpus, halves, max_steps=4, checkpoint_steps=2, steps_per_epoch=4)
    assert resumed["initial_step"] == 2 and resumed["global_step"] == whole["global_step"] == 4
    train_config = json.loads((tmp_path / "halves" / "train_config.json").read_text())
    assert train_config["segment_labels"] is True and train_config["init_model"] == rated_corpus["video"]


def test_steps_per_epoch_count_rated_segments(rated_corpus, tmp_path):
    from nextvlad.segments import count_rated_segments

    segments = count_rated_segments([rated_corpus["train"]])
    result = _fine_tune(rated_corpus, tmp_path / "count", epochs=1)
    assert result["total_steps"] == math.ceil(segments / 16)
    assert segments == sum(
        1 for _ in yt8m.make_segment_dataset(rated_corpus["train"], batch_size=1, num_classes=6)
    )


def test_clear_errors(rated_corpus, tmp_path):
    unrated = tmp_path / "unrated.tfrecord"
    write_tfrecords(unrated, [rated_record("u", *random_frames(np.random.default_rng(0), 6), [])])
    with pytest.raises(ValueError, match="--train_data records carry no segment ratings"):
        _fine_tune({**rated_corpus, "train": str(unrated)}, tmp_path / "a")
    args = tr.build_parser().parse_args(
        [
            "--train_data",
            "x",
            "--model_dir",
            "y",
            "--init_model",
            rated_corpus["video"],
            "--cluster_size",
            "8",
        ]
    )
    with pytest.raises(ValueError, match=r"--cluster_size 8 \(it has 4\)"):
        tr.resolve_configs(args)
    args = tr.build_parser().parse_args(
        ["--train_data", "x", "--model_dir", "y", "--init_model", str(tmp_path)]
    )
    with pytest.raises(FileNotFoundError, match="no .*config.json"):
        tr.resolve_configs(args)
