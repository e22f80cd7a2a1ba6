"""Synthetic YouTube-8M corpus: format, determinism, label structure, learnability and the CLI."""

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from nextvlad import synthetic
from nextvlad.metrics import mean_average_precision
from nextvlad.synthetic import generate_corpus
from nextvlad.synthetic_videos import scene_bank

REPO_ROOT = Path(__file__).resolve().parents[2]

NUM_VIDEOS, NUM_CLASSES, SHARDS = 400, 10, 3
MIN_FRAMES, MAX_FRAMES = 30, 60


def _dequantize(q):
    # The dataset's reference reader formula, written out independently of nextvlad.yt8m.
    return q.astype(np.float32) * (4 / 255) + (4 / 512 - 2)


def _records(files):
    return [bytes(r) for f in files for r in tf.data.TFRecordDataset(str(f)).as_numpy_iterator()]


def _parse(record):
    seq = tf.train.SequenceExample.FromString(record)
    frames = {}
    for name, size in (("rgb", 1024), ("audio", 128)):
        values = [f.bytes_list.value for f in seq.feature_lists.feature_list[name].feature]
        assert all(len(v) == 1 and len(v[0]) == size for v in values), f"{name} frames must be {size} bytes"
        frames[name] = np.frombuffer(b"".join(v[0] for v in values), dtype=np.uint8).reshape(-1, size)
    return {
        "id": seq.context.feature["id"].bytes_list.value[0].decode(),
        "labels": list(seq.context.feature["labels"].int64_list.value),
        **frames,
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate_corpus(
        out,
        num_videos=NUM_VIDEOS,
        num_classes=NUM_CLASSES,
        shards=SHARDS,
        seed=0,
        min_frames=MIN_FRAMES,
        max_frames=MAX_FRAMES,
    )
    videos = [_parse(r) for r in _records(summary["files"])]
    labels = np.zeros((len(videos), NUM_CLASSES), dtype=bool)  # [N, C]
    for i, video in enumerate(videos):
        labels[i, video["labels"]] = True
    return {"dir": out, "summary": summary, "videos": videos, "labels": labels}


def test_shard_files_counts_and_label_names(corpus):
    out, summary = corpus["dir"], corpus["summary"]
    expected = [out / f"synthetic-{s:05d}-of-{SHARDS:05d}.tfrecord" for s in range(SHARDS)]
    assert [Path(f) for f in summary["files"]] == expected
    # Contiguous near-equal slices: 400 videos over 3 shards.
    assert [len(_records([f])) for f in expected] == [133, 133, 134]
    assert len(corpus["videos"]) == summary["num_videos"] == NUM_VIDEOS
    assert len({v["id"] for v in corpus["videos"]}) == NUM_VIDEOS
    with open(out / "label_names.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label_id", "label_name"]
    assert [int(r[0]) for r in rows[1:]] == list(range(NUM_CLASSES))
    assert all(r[1] for r in rows[1:])


def test_records_follow_the_documented_ranges(corpus):
    frame_counts = [len(v["rgb"]) for v in corpus["videos"]]
    assert all(MIN_FRAMES <= t <= MAX_FRAMES for t in frame_counts)
    assert all(len(v["audio"]) == len(v["rgb"]) for v in corpus["videos"])
    assert len(set(frame_counts)) > 10  # lengths actually vary
    for video in corpus["videos"]:
        assert 1 <= len(video["labels"]) <= 4
        assert video["labels"] == sorted(set(video["labels"]))
        assert all(0 <= c < NUM_CLASSES for c in video["labels"])
    # The summary reports what was written.
    summary = corpus["summary"]
    assert summary["num_frames"] == sum(frame_counts)
    assert summary["label_counts"] == corpus["labels"].sum(axis=0).tolist()
    assert summary["labels_per_video"] == dict(Counter(len(v["labels"]) for v in corpus["videos"]))


def test_class_frequencies_are_skewed_like_a_catalogue(corpus):
    counts = corpus["labels"].sum(axis=0)
    assert counts.min() > 0  # every class occurs
    assert counts[0] > 3 * counts[-1]  # head classes dominate the tail
    assert 2.0 < corpus["labels"].sum(axis=1).mean() < 3.0  # uniform 1..4 labels per video


def test_features_stay_inside_the_quantization_range(corpus):
    rgb = np.concatenate([v["rgb"] for v in corpus["videos"][:50]])
    x = _dequantize(rgb)
    assert 0.4 < x.std() < 1.0
    # Values are spread over the range and rarely saturate at +-2.
    assert np.mean((rgb == 0) | (rgb == 255)) < 0.01


def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path):
    kwargs = dict(num_videos=40, num_classes=5, shards=2, min_frames=5, max_frames=12)
    a = generate_corpus(tmp_path / "a", seed=7, **kwargs)
    b = generate_corpus(tmp_path / "b", seed=7, **kwargs)
    c = generate_corpus(tmp_path / "c", seed=8, **kwargs)
    for fa, fb, fc in zip(a["files"], b["files"], c["files"], strict=True):
        assert Path(fa).read_bytes() == Path(fb).read_bytes()
        assert Path(fa).read_bytes() != Path(fc).read_bytes()


def test_each_video_is_independent_of_sharding_and_corpus_size(tmp_path):
    kwargs = dict(num_classes=5, seed=3, min_frames=5, max_frames=12)
    one = _records(generate_corpus(tmp_path / "one", num_videos=300, shards=1, **kwargs)["files"])
    many = _records(generate_corpus(tmp_path / "many", num_videos=300, shards=7, **kwargs)["files"])
    fewer = _records(generate_corpus(tmp_path / "fewer", num_videos=100, shards=2, **kwargs)["files"])
    assert one == many
    assert fewer == one[:100]


def test_unlabeled_videos_when_allowed(tmp_path):
    summary = generate_corpus(
        tmp_path, num_videos=60, num_classes=3, shards=1, min_frames=2, max_frames=3, labels_per_video=(0, 1)
    )
    labels = [_parse(r)["labels"] for r in _records(summary["files"])]
    assert any(len(x) == 0 for x in labels) and any(len(x) == 1 for x in labels)
    assert max(len(x) for x in labels) == 1


def _nearest(frames, prototypes):
    x = _dequantize(frames)  # [T, D]
    distances = (x**2).sum(1)[:, None] - 2 * x @ prototypes.T + (prototypes**2).sum(1)[None]  # [T, S]
    return distances.argmin(axis=1)  # [T]


def test_each_label_shows_its_own_scenes(corpus):
    """Frames nearest to a class's scenes occur in videos with that label, and almost never elsewhere."""
    bank = scene_bank(NUM_CLASSES, seed=0)
    labels = corpus["labels"]
    for modality, prototypes in (("rgb", bank.rgb), ("audio", bank.audio)):
        scene_frames = np.zeros(labels.shape + (2,))  # [N, C, 2] frames showing each of a class's scenes
        for i, video in enumerate(corpus["videos"]):
            nearest = _nearest(video[modality], prototypes)
            for c in range(NUM_CLASSES):
                for half, scene in enumerate(bank.class_scenes(c, modality)):
                    scene_frames[i, c, half] = np.sum(nearest == scene)
        positives, negatives = scene_frames[labels].sum(-1), scene_frames[~labels].sum(-1)
        # rgb: shown in ~5-20% of frames of 90% of positive videos; audio weaker (60%, 5-15%).
        assert positives.mean() > (4.0 if modality == "rgb" else 1.0), modality
        assert negatives.mean() < 0.05, modality
        assert np.mean(positives > 0) > (0.75 if modality == "rgb" else 0.45), modality
        # Both scenes of each pair are shown, about equally often (that is what hides them from the mean).
        per_half = scene_frames[labels].sum(0)  # [2]
        assert per_half.min() > 0.8 * per_half.max(), (modality, per_half)


def _scene_statistics(videos, labels, num_classes, seed):
    """(share of rgb frames showing the class's scenes, per positive (video, label); share of consecutive
    rgb frames showing the same scene), from each frame's nearest scene prototype."""
    bank = scene_bank(num_classes, seed=seed)
    shares, same, pairs = [], 0, 0
    for video, video_labels in zip(videos, labels, strict=True):
        nearest = _nearest(video["rgb"], bank.rgb)  # [T]
        same += int(np.sum(nearest[1:] == nearest[:-1]))
        pairs += len(nearest) - 1
        for c in np.flatnonzero(video_labels):
            shares.append(np.isin(nearest, bank.class_scenes(int(c))).mean())
    return np.array(shares), same / pairs


def test_hard_setting_shows_each_label_in_fewer_and_shorter_shots(corpus, tmp_path):
    summary = generate_corpus(
        tmp_path, num_videos=150, num_classes=NUM_CLASSES, shards=1, seed=0, min_frames=MIN_FRAMES,
        max_frames=MAX_FRAMES, setting="hard",
    )  # fmt: skip
    assert summary["setting"] == "hard"
    hard = [_parse(r) for r in _records(summary["files"])]
    hard_labels = np.zeros((len(hard), NUM_CLASSES), dtype=bool)
    for i, video in enumerate(hard):
        hard_labels[i, video["labels"]] = True
    standard_share, standard_same = _scene_statistics(corpus["videos"], corpus["labels"], NUM_CLASSES, 0)
    hard_share, hard_same = _scene_statistics(hard, hard_labels, NUM_CLASSES, 0)
    # Standard: present in 90% of positives, in 5-20% of frames (mean 0.9 x 0.125 = 0.11); hard: 80%, 2-8%
    # (mean 0.04).
    assert 0.09 < standard_share.mean() < 0.14
    assert 0.025 < hard_share.mean() < 0.055
    assert np.mean(hard_share == 0) > np.mean(standard_share == 0) + 0.05  # more positives show nothing
    # Shots of two frames on average (a new shot with probability 1/2): over half of consecutive frames
    # repeat a scene. One-frame shots: a repeat only when the next draw happens to pick the same scene.
    assert standard_same > 0.45
    assert hard_same < 0.25


def test_noisy_setting_writes_the_standard_videos_under_incomplete_and_wrong_labels(corpus, tmp_path):
    summary = generate_corpus(
        tmp_path, num_videos=NUM_VIDEOS, num_classes=NUM_CLASSES, shards=1, seed=0, min_frames=MIN_FRAMES,
        max_frames=MAX_FRAMES, setting="noisy",
    )  # fmt: skip
    noisy = [_parse(r) for r in _records(summary["files"])]
    standard = corpus["videos"]  # the same seed: the true labels
    assert [v["id"] for v in noisy] == [v["id"] for v in standard]
    for a, b in zip(noisy, standard, strict=True):
        assert np.array_equal(a["rgb"], b["rgb"]) and np.array_equal(a["audio"], b["audio"])
    missing = spurious = 0
    for a, b in zip(noisy, standard, strict=True):
        recorded, true = set(a["labels"]), set(b["labels"])
        assert recorded & true, "every video keeps at least one true label"
        assert len(recorded - true) <= 1
        missing += len(true - recorded)
        spurious += len(recorded - true)
    # 1-4 labels per video, each dropped with probability 0.3 unless it is the last: 0.26 of them expected.
    assert 0.21 < missing / corpus["labels"].sum() < 0.31
    assert 0.22 < spurious / NUM_VIDEOS < 0.38  # 0.3 expected


def _ridge_scores(features, labels, train, *, penalty):
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    z = np.hstack([(features - mean) / std, np.ones((len(features), 1))])
    weights = np.linalg.solve(
        z[train].T @ z[train] + penalty * np.eye(z.shape[1]), z[train].T @ labels[train]
    )
    return z[~train] @ weights


def _farthest_point_codebook(frames, size):
    """Greedy farthest-point centres: each new centre is the frame farthest from all chosen ones."""
    chosen = [0]
    distance = ((frames - frames[0]) ** 2).sum(1)
    for _ in range(size - 1):
        chosen.append(int(distance.argmax()))
        distance = np.minimum(distance, ((frames - frames[chosen[-1]]) ** 2).sum(1))
    return frames[chosen]


def test_mean_pooling_is_only_weakly_informative_but_frame_histograms_are(corpus):
    """A bag-of-scenes histogram (codebook learnt from frames) beats mean pooling by a wide margin."""
    videos, labels = corpus["videos"], corpus["labels"].astype(np.float64)
    train = np.arange(len(videos)) < 280
    # Frame features: rgb through a fixed random projection (keeps this test fast; distances survive).
    projection = np.random.default_rng(0).normal(size=(1024, 64)).astype(np.float32) / 8
    frames = [_dequantize(v["rgb"]) @ projection for v in videos]  # [T, 64] each
    codebook = _farthest_point_codebook(
        np.concatenate([f for f, t in zip(frames, train, strict=True) if t]), 96
    )  # [K, 64]

    def histogram(f):
        nearest = ((f[:, None, :] - codebook[None]) ** 2).sum(-1).argmin(1)
        return np.bincount(nearest, minlength=len(codebook)) / len(f)

    bag = np.stack([histogram(f) for f in frames])  # [N, K]
    mean_pooled = np.stack(
        [np.concatenate([_dequantize(v["rgb"]).mean(0), _dequantize(v["audio"]).mean(0)]) for v in videos]
    )
    test_labels = labels[~train]
    chance = mean_average_precision(np.random.default_rng(1).random(test_labels.shape), test_labels)
    mean_map = max(
        mean_average_precision(_ridge_scores(mean_pooled, labels, train, penalty=p), test_labels)
        for p in (1, 10, 100)
    )
    bag_map = max(
        mean_average_precision(_ridge_scores(bag, labels, train, penalty=p), test_labels)
        for p in (1, 10, 100)
    )
    assert bag_map > 0.75
    assert bag_map > mean_map + 0.2
    # Weak, not absent: the pairs are slightly asymmetric.
    assert chance + 0.05 < mean_map < 0.65


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match=r"num_videos must be a positive integer; got 0"):
        generate_corpus(tmp_path, num_videos=0)
    with pytest.raises(ValueError, match=r"min_frames=50 is larger than max_frames=10"):
        generate_corpus(tmp_path, min_frames=50, max_frames=10)
    with pytest.raises(ValueError, match=r"max labels per video \(4\) exceeds num_classes \(3\)"):
        generate_corpus(tmp_path, num_classes=3)
    with pytest.raises(ValueError, match=r"shards=5 is more than num_videos=4"):
        generate_corpus(tmp_path, num_videos=4, shards=5)
    with pytest.raises(ValueError, match=r"setting must be one of standard, hard, noisy; got 'easy'"):
        generate_corpus(tmp_path, setting="easy")
    assert not list(tmp_path.iterdir())  # nothing written on bad input


def _run_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "nextvlad.synthetic", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_help_lists_the_options():
    done = _run_cli("--help")
    assert done.returncode == 0, done.stderr
    for option in (
        "--output",
        "--num_videos",
        "--num_classes",
        "--shards",
        "--seed",
        "--min_frames",
        "--max_frames",
        "--labels_per_video",
        "--prefix",
        "--setting",
    ):
        assert option in done.stdout


def test_cli_rejects_a_bad_value_with_its_name(tmp_path):
    done = _run_cli("--output", str(tmp_path / "out"), "--min_frames", "0")
    assert done.returncode == 2
    assert "min_frames must be a positive integer; got 0" in done.stderr


def test_cli_writes_a_corpus_and_prints_a_summary(tmp_path, capsys):
    code = synthetic.main(
        [
            "--output",
            str(tmp_path),
            "--num_videos",
            "12",
            "--num_classes",
            "6",
            "--shards",
            "2",
            "--min_frames",
            "3",
            "--max_frames",
            "5",
            "--prefix",
            "train",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Wrote 12 videos" in printed and "videos/s" in printed and "labels per video" in printed
    files = sorted(p.name for p in tmp_path.glob("*.tfrecord"))
    assert files == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert (tmp_path / "label_names.csv").is_file()


# ------------------------------------------------------------------------------------------------
# Segment ratings (--segments)
# ------------------------------------------------------------------------------------------------


def _segment_fields(record):
    context = tf.train.SequenceExample.FromString(record).context.feature
    return (
        list(context["segment_start_times"].int64_list.value),
        list(context["segment_labels"].int64_list.value),
        list(context["segment_scores"].float_list.value),
    )


@pytest.fixture(scope="module")
def rated_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("rated")
    summary = generate_corpus(
        out, num_videos=60, num_classes=NUM_CLASSES, shards=1, min_frames=12, max_frames=60, segment_ratings=2
    )
    return summary, _records(summary["files"])


def test_segment_ratings_say_truthfully_where_each_label_is_shown(rated_corpus):
    """A window is rated present exactly when one of its frames shows one of the label's rgb scenes (each
    frame's scene read back from the pixels: its nearest scene prototype), and only the video's own labels
    are rated, on whole 5-frame windows, at most 2 of each rating per label."""
    summary, records = rated_corpus
    bank = scene_bank(NUM_CLASSES, seed=0)
    ratings = present = 0
    for record in records:
        video = _parse(record)
        scenes = _nearest(video["rgb"], bank.rgb)  # [T] scene id shown by each frame
        starts, labels, scores = _segment_fields(record)
        assert set(labels) <= set(video["labels"])
        for start, label, score in zip(starts, labels, scores, strict=True):
            assert start % 5 == 0 and start + 5 <= len(scenes), (video["id"], start)
            shown = np.isin(scenes[start : start + 5], bank.class_scenes(label, "rgb")).any()
            assert score == float(shown), (video["id"], start, label)
        for label in video["labels"]:
            mine = [s for lab, s in zip(labels, scores, strict=True) if lab == label]
            assert mine.count(1.0) <= 2 and mine.count(0.0) <= 2
        ratings += len(scores)
        present += int(sum(scores))
    assert summary["ratings"] == ratings and summary["positive_ratings"] == present
    assert 0.2 < present / ratings < 0.8  # both kinds are common enough to rank


def test_segment_ratings_leave_the_frames_and_labels_unchanged(rated_corpus, tmp_path):
    summary, rated = rated_corpus
    plain = generate_corpus(
        tmp_path, num_videos=60, num_classes=NUM_CLASSES, shards=1, min_frames=12, max_frames=60
    )
    for with_ratings, without in zip(rated, _records(plain["files"]), strict=True):
        a, b = _parse(with_ratings), _parse(without)
        assert a["labels"] == b["labels"]
        assert np.array_equal(a["rgb"], b["rgb"]) and np.array_equal(a["audio"], b["audio"])
        assert (
            not tf.train.SequenceExample.FromString(without)
            .context.feature["segment_labels"]
            .int64_list.value
        )


def test_segment_ratings_write_the_rated_class_list(rated_corpus):
    summary, _ = rated_corpus
    with open(summary["segment_label_ids"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Index"]  # the 2019 release's segment_label_ids.csv layout
    assert [int(r[0]) for r in rows[1:]] == list(range(NUM_CLASSES))


def test_cli_segments_flag(tmp_path, capsys):
    code = synthetic.main(
        ["--output", str(tmp_path), "--num_videos", "8", "--num_classes", "4", "--shards", "1", "--segments",
         "--segment_ratings", "1", "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert "segment ratings:" in capsys.readouterr().out
    assert (tmp_path / "segment_label_ids.csv").exists()
    with pytest.raises(ValueError, match="segment_ratings must be an integer >= 0; got -1"):
        generate_corpus(tmp_path / "bad", num_videos=2, shards=1, segment_ratings=-1)
