"""trainer.evaluate: metrics against nextvlad.metrics on model.predict, output files, submission, errors."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from nextvlad import ModelConfig, build_model, metrics, records, serving_model, yt8m
from trainer import evaluate as ev
from trainer import evaluation

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = dict(num_classes=7, cluster_size=4, groups=2, hidden_size=16, gating_reduction=4)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save_model(model_dir: Path, config: ModelConfig) -> keras.Model:
    model = serving_model(build_model(config))
    model_dir.mkdir(parents=True)
    model.save(model_dir / "model.keras")
    config.to_json(model_dir / "config.json")
    return model


def _labels_for(rng, num_classes: int, never: int | None) -> list[int]:
    classes = [c for c in range(num_classes) if c != never]
    return sorted(rng.choice(classes, size=rng.integers(0, 4), replace=False).tolist())


def _reference(model: keras.Model, records: list[bytes], input_format: str, num_classes: int):
    """Scores from the validating record parser and a plain `model.predict` (not make_dataset)."""
    if input_format == "frame":
        parsed = [yt8m.parse_frame_example(r, num_classes=num_classes) for r in records]
        longest = max(p["num_frames"] for p in parsed)
        inputs = {
            "rgb": np.zeros((len(parsed), longest, 1024), "float32"),
            "audio": np.zeros((len(parsed), longest, 128), "float32"),
            "num_frames": np.array([p["num_frames"] for p in parsed], "int32"),
        }
        for i, p in enumerate(parsed):
            inputs["rgb"][i, : p["num_frames"]] = p["rgb"]
            inputs["audio"][i, : p["num_frames"]] = p["audio"]
    else:
        parsed = [yt8m.parse_video_example(r, num_classes=num_classes) for r in records]
        inputs = {
            "mean_rgb": np.stack([p["mean_rgb"] for p in parsed]),
            "mean_audio": np.stack([p["mean_audio"] for p in parsed]),
        }
    labels = np.zeros((len(parsed), num_classes), bool)
    for i, p in enumerate(parsed):
        labels[i, p["labels"]] = True
    scores = model.predict(inputs, batch_size=len(parsed), verbose=0)["predictions"]
    return [p["id"] for p in parsed], scores, labels


@pytest.fixture(scope="module")
def frame_case(tmp_path_factory):
    """A tiny frame-level model and 22 videos of 1-9 frames in two files; class 6 has no positives."""
    root = tmp_path_factory.mktemp("frame")
    keras.utils.set_random_seed(0)
    model = _save_model(root / "model", ModelConfig(**TINY))
    rng = np.random.default_rng(0)
    records = []
    for i in range(22):
        frames = int(rng.integers(1, 10))
        records.append(
            yt8m.frame_example_bytes(
                f"f{i:03d}",
                _labels_for(rng, 7, never=6),
                rng.integers(0, 256, (frames, 1024), dtype=np.uint8),
                rng.integers(0, 256, (frames, 128), dtype=np.uint8),
            )
        )
    yt8m.write_tfrecords(str(root / "data" / "part-0.tfrecord"), records[:12])
    yt8m.write_tfrecords(str(root / "data" / "part-1.tfrecord"), records[12:])
    ids, scores, labels = _reference(model, records, "frame", 7)
    return dict(
        root=root, pattern=str(root / "data" / "part-*.tfrecord"), ids=ids, scores=scores, labels=labels
    )


@pytest.fixture(scope="module")
def video_case(tmp_path_factory):
    """A tiny video-level model with 30 classes (so top-20 is a strict subset) and 17 videos."""
    root = tmp_path_factory.mktemp("video")
    keras.utils.set_random_seed(1)
    config = ModelConfig.preset("video", num_classes=30, hidden_size=16, gating_reduction=4, moe_mixtures=2)
    model = _save_model(root / "model", config)
    rng = np.random.default_rng(1)
    records = [
        yt8m.video_example_bytes(
            f"v{i:03d}", _labels_for(rng, 30, never=None), rng.normal(size=1024), rng.normal(size=128)
        )
        for i in range(17)
    ]
    yt8m.write_tfrecords(str(root / "data" / "video.tfrecord"), records)
    ids, scores, labels = _reference(model, records, "video", 30)
    return dict(
        root=root, pattern=str(root / "data" / "video.tfrecord"), ids=ids, scores=scores, labels=labels
    )


def _expected_metrics(scores, labels, top_k=20) -> dict:
    return {
        "gap": metrics.gap(scores, labels, top_k=top_k),
        "hit_at_one": metrics.hit_at_one(scores, labels),
        "perr": metrics.perr(scores, labels),
        "map": metrics.mean_average_precision(scores, labels, top_k=top_k),
    }


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------------------------------------
# Command line, frame level
# ------------------------------------------------------------------------------------------------


def test_cli_prints_and_writes_metrics_of_the_model_predictions(frame_case, tmp_path):
    names = tmp_path / "names.csv"
    names.write_text('label_id,label_name\n0,Game\n1,"Cars, trucks"\n2,\n3,Music\n4,Food\n5,Dance\n6,Cats\n')
    result = _run_cli(
        "--model", str(frame_case["root"] / "model"), "--data", frame_case["pattern"],
        "--label_names", str(names), "--batch_size", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    expected = _expected_metrics(frame_case["scores"], frame_case["labels"])
    table = result.stdout
    for title in ("GAP@20", "Hit@1", "PERR", "mAP", "videos"):
        assert title in table
    assert f"{expected['gap']:.4f}" in table and "22" in table

    # Default outputs: beside the model, never over the trainer's metrics.json.
    model_dir = frame_case["root"] / "model"
    written = json.loads((model_dir / "eval_metrics.json").read_text())
    for key, value in expected.items():
        assert written[key] == pytest.approx(value, abs=1e-6), key
    assert written["num_videos"] == 22 and written["input_format"] == "frame"
    assert not (model_dir / "metrics.json").exists()

    rows = _read_csv(model_dir / "eval_metrics_per_class.csv")
    assert list(rows[0]) == ["class_id", "name", "positives", "top_k_count", "ap"]
    assert [int(r["class_id"]) for r in rows] == list(range(7))
    assert [r["name"] for r in rows] == ["Game", "Cars, trucks", "", "Music", "Food", "Dance", "Cats"]
    assert [int(r["positives"]) for r in rows] == frame_case["labels"].sum(0).tolist()
    # With 7 classes every class is in every video's top-20.
    assert all(int(r["top_k_count"]) == 22 for r in rows)
    reference_ap = metrics.average_precision_per_class(frame_case["scores"], frame_case["labels"])
    assert rows[6]["ap"] == ""  # no positives: undefined, not 0
    for row, ap in zip(rows[:6], reference_ap[:6], strict=True):
        assert float(row["ap"]) == pytest.approx(ap, abs=2e-6)

    png = (model_dir / "eval_metrics.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_cli_reports_a_missing_model(frame_case, tmp_path):
    result = _run_cli("--model", str(tmp_path / "nowhere"), "--data", frame_case["pattern"])
    assert result.returncode != 0
    assert "No model at" in result.stderr and str(tmp_path / "nowhere") in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------
# Library, video level
# ------------------------------------------------------------------------------------------------


def test_evaluate_video_level_with_submission(video_case, tmp_path):
    out = tmp_path / "reports" / "held_out.json"
    submission = tmp_path / "submission.csv"
    result = ev.evaluate(
        str(video_case["root"] / "model" / "model.keras"),
        video_case["pattern"],
        output=str(out),
        submission=str(submission),
        batch_size=4,
        progress=False,
    )
    expected = _expected_metrics(video_case["scores"], video_case["labels"])
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-6), key
    assert result["input_format"] == "video" and result["num_videos"] == 17
    assert json.loads(out.read_text())["gap"] == result["gap"]
    assert (tmp_path / "reports" / "held_out.png").read_bytes().startswith(PNG_MAGIC)

    rows = _read_csv(tmp_path / "reports" / "held_out_per_class.csv")
    assert list(rows[0]) == ["class_id", "positives", "top_k_count", "ap"]  # no names given
    assert len(rows) == 30
    # Independent count: how often each class is among a video's 20 highest scores.
    top20 = np.argsort(-video_case["scores"], axis=1, kind="stable")[:, :20]
    assert [int(r["top_k_count"]) for r in rows] == np.bincount(top20.ravel(), minlength=30).tolist()

    lines = submission.read_text().splitlines()
    assert lines[0] == "VideoId,LabelConfidencePairs"
    assert len(lines) == 1 + 17
    for line, video_id, scores, top in zip(
        lines[1:], video_case["ids"], video_case["scores"], top20, strict=True
    ):
        got_id, pairs = line.split(",")
        assert got_id == video_id
        tokens = pairs.split(" ")
        assert len(tokens) == 40
        classes = [int(t) for t in tokens[0::2]]
        values = [float(t) for t in tokens[1::2]]
        assert all(a >= b for a, b in zip(values, values[1:], strict=False))
        assert classes == top.tolist()
        np.testing.assert_allclose(values, scores[top], rtol=1e-5)  # "%g" keeps 6 significant digits
        assert tokens[1] == "%g" % scores[top[0]]  # noqa: UP031 (the challenge's format)


def test_predict_records_streams_the_same_scores_as_model_predict(frame_case):
    model, info = ev.load_serving_model(str(frame_case["root"] / "model"))
    assert info.input_format == "frame"
    # Batches of 5 (the last one short) of videos padded to different lengths: padding must not
    # change any score. The reader interleaves the two files, so match rows by id.
    got = evaluation.predict_records(model, info, frame_case["pattern"], batch_size=5, progress=False)
    assert sorted(got.ids) == frame_case["ids"]
    order = [frame_case["ids"].index(i) for i in got.ids]
    np.testing.assert_array_equal(got.labels, frame_case["labels"][order])
    np.testing.assert_allclose(got.scores, frame_case["scores"][order], rtol=1e-5, atol=1e-6)


def test_records_of_the_2017_layout_are_evaluated_like_the_2018_layout(frame_case, tmp_path, caplog):
    """The 2017 release names the id feature `video_id`; evaluation reads it and logs the layout."""
    import logging

    from trainer.checks import check_records

    model, info = ev.load_serving_model(str(frame_case["root"] / "model"))
    renamed = []
    for path in sorted((frame_case["root"] / "data").glob("part-*.tfrecord")):
        for data in records.iter_tfrecords(str(path)):
            proto = tf.train.SequenceExample.FromString(data)
            proto.context.feature["video_id"].CopyFrom(proto.context.feature["id"])
            del proto.context.feature["id"]
            renamed.append(proto.SerializeToString())
    pattern = str(tmp_path / "old.tfrecord")
    yt8m.write_tfrecords(pattern, renamed)
    with caplog.at_level(logging.INFO):
        ev._log_record_layout(pattern, info)
        check_records([pattern], flag="--train_data", input_format="frame", num_classes=7, max_frames=300)
    assert caplog.text.count("2017 layout (id in 'video_id')") == 2
    got = evaluation.predict_records(model, info, pattern, batch_size=5, progress=False)
    assert sorted(got.ids) == frame_case["ids"]
    order = [frame_case["ids"].index(i) for i in got.ids]
    np.testing.assert_allclose(got.scores, frame_case["scores"][order], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The GAP@k curve
# ------------------------------------------------------------------------------------------------


def test_gap_curve_by_hand():
    # Pooled top-2: 0.9 (hit), 0.8 (miss), 0.7 (hit), 0.1 (miss); 3 positives in total.
    predictions = np.array([[0.9, 0.8, 0.0], [0.1, 0.0, 0.7]])
    labels = np.array([[1, 0, 1], [0, 0, 1]])
    precision, recall, thresholds = evaluation.gap_curve(predictions, labels, top_k=2)
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.7, 0.1])
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 2 / 4])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # GAP = 1·1/3 + 2/3·1/3
    assert np.sum(precision * np.diff(recall, prepend=0.0)) == pytest.approx(1 / 3 + 2 / 9)


def test_gap_curve_area_is_gap():
    rng = np.random.default_rng(3)
    predictions = rng.random((60, 40)).round(2)  # rounding makes ties, which must be ranked like gap's
    labels = rng.random((60, 40)) < 0.08
    precision, recall, _ = evaluation.gap_curve(predictions, labels, top_k=5)
    assert precision.shape == (300,)
    area = np.sum(precision * np.diff(recall, prepend=0.0))
    assert area == pytest.approx(metrics.gap(predictions, labels, top_k=5), abs=1e-12)


def test_blockwise_metrics_equal_the_library_on_whole_arrays(monkeypatch):
    # Small blocks so that 50 videos span several row blocks.
    monkeypatch.setattr(evaluation, "_ROW_BLOCK", 7)
    rng = np.random.default_rng(5)
    predictions = rng.random((50, 23)).round(1).astype("float32")  # many ties
    labels = rng.random((50, 23)) < 0.1
    labels[:6] = False  # unlabeled videos count for Hit@1, not for PERR
    labels[:, 3] = False  # a class without positives
    got = evaluation.compute_evaluation(predictions, labels, top_k=5)
    expected = _expected_metrics(predictions, labels, top_k=5)
    for key, value in expected.items():
        assert got.metrics[key] == pytest.approx(value, abs=1e-12), key
    np.testing.assert_array_equal(
        got.average_precision, metrics.average_precision_per_class(predictions, labels, top_k=5)
    )
    assert got.metrics["num_labeled_videos"] == int((labels.sum(1) > 0).sum())
    assert got.metrics["classes_with_positives"] == int((labels.sum(0) > 0).sum()) < 23


# ------------------------------------------------------------------------------------------------
# Errors a user can make
# ------------------------------------------------------------------------------------------------


def test_model_dir_without_model_file(tmp_path, video_case):
    with pytest.raises(FileNotFoundError, match="has no model.keras"):
        ev.evaluate(str(tmp_path), video_case["pattern"], progress=False)


def test_pattern_matching_nothing(video_case, tmp_path):
    pattern = str(tmp_path / "missing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="No files match") as info:
        ev.evaluate(
            str(video_case["root"] / "model"), pattern, output=str(tmp_path / "m.json"), progress=False
        )
    assert pattern in str(info.value)


def test_records_of_the_other_format(frame_case, video_case, tmp_path):
    with pytest.raises(ValueError, match="holds video-level records but the model .* takes frame-level"):
        ev.evaluate(
            str(frame_case["root"] / "model"),
            video_case["pattern"],
            output=str(tmp_path / "m.json"),
            progress=False,
        )


def test_label_outside_the_vocabulary_after_the_first_record(video_case, tmp_path):
    rng = np.random.default_rng(2)
    records = [
        yt8m.video_example_bytes(f"x{i}", [i if i < 3 else 30], rng.normal(size=1024), rng.normal(size=128))
        for i in range(4)
    ]
    yt8m.write_tfrecords(str(tmp_path / "bad.tfrecord"), records)
    with pytest.raises(ValueError, match="30-class model.*num_classes"):
        ev.evaluate(
            str(video_case["root"] / "model"),
            str(tmp_path / "bad.tfrecord"),
            output=str(tmp_path / "m.json"),
            progress=False,
        )
    assert not (tmp_path / "m.json").exists()


def test_input_format_that_contradicts_the_model(frame_case, tmp_path):
    with pytest.raises(ValueError, match="input_format='video', but the model .* takes frame-level"):
        ev.evaluate(
            str(frame_case["root"] / "model"),
            frame_case["pattern"],
            input_format="video",
            output=str(tmp_path / "m.json"),
            progress=False,
        )


def test_not_a_nextvlad_serving_model(tmp_path, video_case):
    plain = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match="is not a NeXtVLAD serving model"):
        ev.evaluate(str(tmp_path / "plain.keras"), video_case["pattern"], progress=False)
    (tmp_path / "junk.keras").write_text("not a zip file")
    with pytest.raises(ValueError, match="Could not load .*junk.keras"):
        ev.evaluate(str(tmp_path / "junk.keras"), video_case["pattern"], progress=False)


def test_real_label_names(shared_data):
    names = records.read_label_names(str(shared_data / "label_names_2018.csv"))
    assert len(names) == 3862 and set(names) == set(range(3862))
    assert names[0] == "Game"
    assert sum(1 for n in names.values() if not n) == 56
