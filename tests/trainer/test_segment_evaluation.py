"""trainer.evaluate --segments: segment mAP@100000 as the starter code defines it, on records and by hand."""

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from scoring_data import random_frames, save_tiny_model, write_tfrecords
from segment_data import rated_record

from nextvlad import metrics
from trainer import evaluate as ev
from trainer.segment_evaluation import SegmentMAP

NUM_CLASSES = 7
MAX_FRAMES = 40


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny model (40 frames) and 14 rated videos of 3-55 frames; ratings past frame 40 included."""
    root = tmp_path_factory.mktemp("segment_eval")
    save_tiny_model(root / "model" / "model.keras", max_frames=MAX_FRAMES)
    rng = np.random.default_rng(3)
    videos = []
    for i in range(14):
        frames = int(rng.integers(3, 56))
        rgb, audio = random_frames(rng, frames)
        starts = list(range(0, frames, 5))
        chosen = rng.choice(len(starts), size=min(4, len(starts)), replace=False)
        ratings = [(starts[j], int(rng.integers(0, NUM_CLASSES)), float(rng.integers(0, 2))) for j in chosen]
        videos.append((f"v{i:02d}", rgb, audio, ratings))
    write_tfrecords(root / "data" / "part-0.tfrecord", [rated_record(*v) for v in videos[:7]])
    write_tfrecords(root / "data" / "part-1.tfrecord", [rated_record(*v) for v in videos[7:]])
    return root, videos


def _reference(root: Path, videos, source: str, max_segments: int) -> float:
    """The library metric on a dense matrix: every segment's scores, in reading order, from `model.predict`
    on each window alone (or on the whole video, copied to its segments); ratings past the model's frames
    are rated rows that no class can retrieve (a row of -1e9 scores, cut or not ranked above anything)."""
    model = keras.saving.load_model(root / "model" / "model.keras")
    rows, rated_rows, rated_classes, ratings = [], [], [], []
    unscored = []
    for _, rgb, audio, video_ratings in videos:
        frames = min(len(rgb), MAX_FRAMES)
        if source == "video":
            inputs = {
                "rgb": rgb[None, :frames],
                "audio": audio[None, :frames],
                "num_frames": np.array([frames]),
            }
            whole = model.predict(inputs, verbose=0)["predictions"][0]
        first = len(rows)
        for start in range(0, frames, 5):
            end = min(start + 5, frames)
            window = {
                "rgb": rgb[None, start:end],
                "audio": audio[None, start:end],
                "num_frames": np.array([end - start]),
            }
            rows.append(whole if source == "video" else model.predict(window, verbose=0)["predictions"][0])
        for start, label, score in video_ratings:
            if start < frames:
                rated_rows.append(first + start // 5)
                rated_classes.append(label)
                ratings.append(score)
            else:
                unscored.append((label, score))
    scores = np.array(rows)
    ap = metrics.segment_average_precision(
        scores, rated_rows, rated_classes, ratings, max_predictions=max_segments
    )
    # Unscored positives only enlarge their class's denominator: AP_c · P_c / (P_c + U_c).
    positives = np.bincount(np.array(rated_classes)[np.array(ratings) > 0], minlength=NUM_CLASSES)
    extra = np.bincount([c for c, r in unscored if r > 0], minlength=NUM_CLASSES)
    ap = np.where(
        positives > 0, ap * positives / np.maximum(positives + extra, 1), np.where(extra > 0, 0.0, np.nan)
    )
    return float(np.nanmean(ap))


@pytest.mark.parametrize("source", ["segments", "video"])
@pytest.mark.parametrize("max_segments", [100_000, 9])  # no cut (rated segments only), and a cut
def test_segment_map_equals_the_metric_on_every_segments_scores(case, tmp_path, source, max_segments):
    root, videos = case
    result = ev.evaluate_segment_task(
        str(root / "model"),
        str(root / "data" / "part-*.tfrecord"),
        output=str(tmp_path / "m.json"),
        source=source,
        max_segments=max_segments,
        batch_size=3,
        progress=False,
    )
    assert result["segment_map"] == pytest.approx(_reference(root, videos, source, max_segments), abs=1e-9)
    assert result["scored"] == ("rated" if max_segments == 100_000 else "all")
    assert result["num_ratings"] == sum(len(v[3]) for v in videos)
    assert (
        result["ratings_beyond_model_frames"]
        == sum(start >= min(len(v[1]), MAX_FRAMES) for v in videos for start, _, _ in v[3])
        > 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["segment_map"] == result["segment_map"]


def test_cli_prints_segment_map_and_writes_the_per_class_csv(case, tmp_path, capsys):
    root, videos = case
    code = ev.main(
        ["--model", str(root / "model"), "--data", str(root / "data" / "part-*.tfrecord"), "--segments",
         "--output", str(tmp_path / "seg.json"), "--quiet"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "seg.json").read_text())
    assert f"segment mAP@100,000: {result['segment_map']:.4f}" in printed
    with open(tmp_path / "seg_per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rated = {c: 0 for c in range(NUM_CLASSES)}
    positives = dict(rated)
    for *_, ratings in videos:
        for _, label, score in ratings:
            rated[label] += 1
            positives[label] += score > 0
    assert [int(r["class_id"]) for r in rows] == [c for c in range(NUM_CLASSES) if rated[c]]
    for row in rows:
        c = int(row["class_id"])
        assert (int(row["rated_segments"]), int(row["positives"])) == (rated[c], positives[c])
        assert (row["ap"] == "") == (positives[c] == 0)
    aps = [float(r["ap"]) for r in rows if r["ap"]]
    assert np.mean(aps) == pytest.approx(result["segment_map"], abs=1e-6)


def test_segment_map_by_hand():
    """Two classes, 6 segments in reading order, a cut at 3 per class.

    Class 0 ranks s2 (0.9), s0 (0.8), s5 (0.7) | s1, s3, s4 cut. Rated: s0 +, s5 -, s3 +, plus one
    unscored positive. Kept rated in rank order: s0 (+), s5 (-): precision at the positive 1/1; positives 3
    (s0, s3 below the cut, the unscored one): AP = 1/3.
    Class 1 ranks s4 (0.6), s1 (0.5) and s3 (0.5, a tie: reading order puts s1 first) | ... Rated: s3 +,
    s4 -: kept s4 (-), s3 (+): AP = (1/2) / 1 = 0.5. mAP = (1/3 + 1/2) / 2."""
    scores = np.array(
        [[0.8, 0.1], [0.2, 0.5], [0.9, 0.0], [0.3, 0.5], [0.1, 0.6], [0.7, 0.2]], dtype=np.float32
    )
    accumulator = SegmentMAP(2, max_predictions=3, rank_all=True)
    accumulator.add(scores[:4], [0, 3, 3], [0, 0, 1], [1, 1, 1])
    accumulator.add(scores[4:], [0, 1], [1, 0], [0, 0])  # rows of this block: s4 and s5
    accumulator.add_unscored([0], [1])
    ap, rated, positives = accumulator.result()
    assert ap.tolist() == pytest.approx([1 / 3, 1 / 2])
    assert rated.tolist() == [4, 2] and positives.tolist() == [3, 1]


def test_errors_name_the_problem(case, tmp_path):
    root, _ = case
    unrated = tmp_path / "unrated.tfrecord"
    write_tfrecords(unrated, [rated_record("u", *random_frames(np.random.default_rng(0), 6), [])])
    with pytest.raises(ValueError, match="carry no segment ratings"):
        ev.evaluate_segment_task(
            str(root / "model"), str(unrated), output=str(tmp_path / "a.json"), progress=False
        )
    with pytest.raises(ValueError, match="rated segment starting at frame 5, which no segment of stride 10"):
        write_tfrecords(
            tmp_path / "grid.tfrecord",
            [rated_record("g", *random_frames(np.random.default_rng(0), 12), [(5, 1, 1.0)])],
        )
        ev.evaluate_segment_task(
            str(root / "model"), str(tmp_path / "grid.tfrecord"), output=str(tmp_path / "b.json"),
            segment_stride=10, progress=False,
        )  # fmt: skip
    save_tiny_model(tmp_path / "video" / "model.keras", input_format="video")
    with pytest.raises(ValueError, match="holds frame-level records but the model"):
        ev.evaluate_segment_task(str(tmp_path / "video"), str(root / "data" / "*.tfrecord"), progress=False)
