"""Segments of videos: windows, their model inputs (slices of the frames), ratings, class lists, rankings."""

import numpy as np
import pytest

from nextvlad.segments import (
    SegmentRanking,
    parse_class_ids,
    ratings_by_segment,
    read_class_ids,
    segment_chunks,
    segment_inputs,
    segment_starts,
    write_class_ids,
)


def test_a_video_is_covered_by_5_second_segments_the_last_one_shorter():
    assert len(segment_starts(300)) == 60  # the 2019 task: 60 segments in a 5-minute video
    assert segment_starts(123).tolist() == list(range(0, 121, 5))  # 25 segments, the last of 3 frames
    assert segment_starts(4).tolist() == [0]
    assert segment_starts(10, length=10, stride=2).tolist() == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="segment stride must be a positive number of frames, got 0"):
        segment_starts(10, stride=0)


def _video(video_id, num_frames, seed):
    rng = np.random.default_rng(seed)
    return {
        "id": video_id,
        "num_frames": num_frames,
        "rgb": rng.integers(1, 256, (num_frames, 1024), dtype=np.uint8),
        "audio": rng.integers(1, 256, (num_frames, 128), dtype=np.uint8),
    }


def test_segment_inputs_are_the_frames_of_each_window_padded_with_zeros():
    a, b = _video("a", 12, 0), _video("b", 3, 1)
    segments = segment_inputs([a, b])
    assert segments.video_index.tolist() == [0, 0, 0, 1]
    assert segments.start_time.tolist() == [0, 5, 10, 0]
    assert segments.inputs["num_frames"].tolist() == [5, 5, 2, 3]
    assert segments.inputs["rgb"].shape == (4, 5, 1024) and segments.inputs["audio"].shape == (4, 5, 128)
    for row, (video, start, frames) in enumerate([(a, 0, 5), (a, 5, 5), (a, 10, 2), (b, 0, 3)]):
        for name in ("rgb", "audio"):
            got = segments.inputs[name][row]
            np.testing.assert_array_equal(got[:frames], video[name][start : start + frames])
            assert not got[frames:].any()  # padding after the segment's frames is zeros


def test_segment_inputs_of_chosen_starts_and_starts_outside_the_video():
    a = _video("a", 12, 0)
    segments = segment_inputs([a, a], starts=[np.array([5]), np.array([], int)])
    assert segments.start_time.tolist() == [5] and segments.video_index.tolist() == [0]
    np.testing.assert_array_equal(segments.inputs["rgb"][0], a["rgb"][5:10])
    with pytest.raises(ValueError, match=r"segment starts \[12\] of video 'a' lie outside its 12 frames"):
        segment_inputs([a], starts=[np.array([12])])


def test_segment_chunks_cover_every_segment_once_in_few_shapes():
    inputs = {"num_frames": np.arange(11), "rgb": np.arange(11)[:, None] * np.ones((1, 2))}
    chunks = list(segment_chunks(inputs, 4))
    assert [rows for _, rows in chunks] == [4, 4, 3]
    assert [len(part["num_frames"]) for part, _ in chunks] == [4, 4, 4]  # 3 real rows filled up to 4
    real = np.concatenate([part["num_frames"][:rows] for part, rows in chunks])
    assert real.tolist() == list(range(11))
    assert [len(p["num_frames"]) for p, _ in segment_chunks({"num_frames": np.arange(5)}, 64)] == [8]


def test_ratings_by_segment_groups_a_records_ratings():
    example = {
        "segment_start_times": [5, 5, 0],
        "segment_labels": [3, 7, 3],
        "segment_scores": [1.0, 0.0, 0.0],
    }
    assert ratings_by_segment(example) == {5: {3: 1.0, 7: 0.0}, 0: {3: 0.0}}
    assert ratings_by_segment({"id": "unrated"}) == {}


def test_class_ids_file_in_the_2019_layout(tmp_path):
    assert parse_class_ids("Index\n3\n1\n3\n") == [1, 3]
    write_class_ids(str(tmp_path / "ids.csv"), [4, 2])
    assert (tmp_path / "ids.csv").read_text() == "Index\n4\n2\n"
    assert read_class_ids(str(tmp_path / "ids.csv")) == [2, 4]
    with pytest.raises(ValueError, match="holds no class ids"):
        parse_class_ids("Index\n")
    with pytest.raises(FileNotFoundError, match="cannot read class ids"):
        read_class_ids(str(tmp_path / "missing.csv"))


def test_the_real_2019_rated_class_list(shared_data):
    ids = read_class_ids(str(shared_data / "segment_label_ids_2019.csv"))
    assert len(ids) == 1000 and ids[0] >= 0 and ids[-1] < 3862


def _best_by_hand(classes, scores, limit):
    """Per class: keys (arrival positions) sorted by descending score, ties in arrival order."""
    out = {}
    for c in sorted(set(classes)):
        mine = [i for i in range(len(classes)) if classes[i] == c]
        out[c] = sorted(mine, key=lambda i: (-scores[i], i))[:limit]
    return out


@pytest.mark.parametrize("limit,block", [(1, 1), (3, 2), (5, 1000), (50, 7)])
def test_segment_ranking_keeps_each_classes_best_segments(limit, block):
    rng = np.random.default_rng(limit)
    classes = rng.integers(0, 6, 400).tolist()
    scores = (rng.integers(0, 8, 400) / 8).tolist()  # many ties: they keep arrival order
    ranking = SegmentRanking(limit=limit, block=block)
    position = 0
    for size in rng.integers(1, 40, 100):
        end = min(position + int(size), 400)
        ranking.add(classes[position:end], scores[position:end], np.arange(position, end))
        position = end
    expected = _best_by_hand(classes, scores, limit)
    assert ranking.classes() == sorted(expected)
    for c, keys in expected.items():
        got_keys, got_scores = ranking.ranked(c)
        assert got_keys.tolist() == keys
        assert got_scores.tolist() == [scores[i] for i in keys]
    assert ranking.ranked(99)[0].size == 0


def test_segment_ranking_by_hand():
    ranking = SegmentRanking(limit=2)
    ranking.add([3, 3, 3, 1], [0.2, 0.9, 0.5, 0.1], np.array(["a:0", "a:5", "b:0", "b:0"]))
    ranking.add([3], [0.9], np.array(["c:0"]))  # ties with a:5, arrived later
    assert ranking.ranked(3)[0].tolist() == ["a:5", "c:0"]
    assert ranking.ranked(1)[0].tolist() == ["b:0"]
    with pytest.raises(ValueError, match="must have one entry per scored segment"):
        ranking.add([1, 2], [0.5], np.array(["x"]))
