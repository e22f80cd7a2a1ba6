"""The wire-format record reader against the protobuf parser it replaced, on every kind of record.

`benchmarks/legacy_parser.py` keeps the old protobuf-based parser (it decodes with `tf.train` protos and
dequantizes to float32). On the same bytes, both must accept the same records with the same contents
(the new reader's uint8 frames dequantized by the dataset's formula equal the old float32 frames), and
reject the same records with the same `reason` and video id.
"""

import numpy as np
import pytest
import tensorflow as tf
from legacy import legacy_parser as legacy
from scoring_data import NUM_CLASSES, bad_frame_records, frame_record, random_frames, video_record

from nextvlad import records
from nextvlad.records import InvalidRecordError


def _feature(kind: str, values) -> tf.train.Feature:
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))
    if kind == "int":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _sequence_example(context: dict, lists: dict) -> bytes:
    return tf.train.SequenceExample(
        context=tf.train.Features(feature=context),
        feature_lists=tf.train.FeatureLists(
            feature_list={k: tf.train.FeatureList(feature=v) for k, v in lists.items()}
        ),
    ).SerializeToString()


def _frame_cases() -> dict[str, bytes]:
    rng = np.random.default_rng(11)
    rgb, audio = random_frames(rng, 6)
    frames = {
        "rgb": [_feature("bytes", [bytes(r)]) for r in rgb],
        "audio": [_feature("bytes", [bytes(a)]) for a in audio],
    }
    long_rgb, long_audio = random_frames(rng, 12)
    cases = {name: data for name, (_, data) in bad_frame_records(rng).items()}
    cases.update(
        {
            "good": frame_record("good", [0, 3, NUM_CLASSES - 1], rgb, audio),
            "unlabeled": frame_record("unlabeled", [], rgb, audio),
            "one_frame": frame_record("one", [1], rgb[:1], audio[:1]),
            "truncated_by_max_frames": frame_record("long", [2], long_rgb, long_audio),
            "id_2017": _sequence_example(
                {"video_id": _feature("bytes", [b"old-layout"]), "labels": _feature("int", [4])}, frames
            ),
            "id_2017_as_2018": _sequence_example(
                {"id": _feature("bytes", [b"old-layout"]), "labels": _feature("int", [4])}, frames
            ),
            "segments": _sequence_example(
                {
                    "id": _feature("bytes", [b"seg"]),
                    "labels": _feature("int", [1]),
                    "segment_start_times": _feature("int", [0, 5]),
                    "segment_labels": _feature("int", [1, 2]),
                    "segment_scores": _feature("float", [1.0, 0.0]),
                },
                {"rgb": frames["rgb"] * 2, "audio": frames["audio"] * 2},
            ),
            "id_not_bytes": _sequence_example(
                {"id": _feature("int", [5]), "labels": _feature("int", [1])}, frames
            ),
            "two_ids": _sequence_example({"id": _feature("bytes", [b"a", b"b"])}, frames),
            "labels_as_floats": _sequence_example(
                {"id": _feature("bytes", [b"float-labels"]), "labels": _feature("float", [1.0])}, frames
            ),
            "negative_label": frame_record("negative", [-1], rgb, audio),
            "rgb_as_ints": _sequence_example(
                {"id": _feature("bytes", [b"int-rgb"])},
                {"rgb": [_feature("int", [1, 2])] * 6, "audio": frames["audio"]},
            ),
            "two_values_per_frame": _sequence_example(
                {"id": _feature("bytes", [b"two"])},
                {"rgb": [_feature("bytes", [bytes(rgb[0]), bytes(rgb[1])])] * 6, "audio": frames["audio"]},
            ),
            "empty_record": b"",
            "random_bytes": bytes(rng.integers(0, 256, 300, dtype=np.uint8)),
        }
    )
    return cases


def _video_cases() -> dict[str, bytes]:
    rng = np.random.default_rng(12)
    rgb, audio = rng.normal(size=1024), rng.normal(size=128)

    def example(features: dict) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    base = {
        "id": _feature("bytes", [b"v"]),
        "labels": _feature("int", [1, 5]),
        "mean_rgb": _feature("float", rgb),
        "mean_audio": _feature("float", audio),
    }
    return {
        "good": video_record("good", [0, 2], rgb, audio),
        "unlabeled": video_record("unlabeled", [], rgb, audio),
        "id_2017": example({**{k: v for k, v in base.items() if k != "id"}, "video_id": base["id"]}),
        "id_2017_as_2018": example(base),
        "missing_id": example({k: v for k, v in base.items() if k != "id"}),
        "missing_mean_rgb": example({k: v for k, v in base.items() if k != "mean_rgb"}),
        "short_mean_audio": example({**base, "mean_audio": _feature("float", audio[:100])}),
        "non_finite": example(
            {**base, "mean_rgb": _feature("float", np.where(np.arange(1024) == 3, np.nan, rgb))}
        ),
        "mean_rgb_as_bytes": example({**base, "mean_rgb": _feature("bytes", [b"x"])}),
        "label_out_of_range": video_record("big-label", [NUM_CLASSES], rgb, audio),
        "frame_level_record": frame_record("frames", [1], *random_frames(rng, 3)),
        "random_bytes": bytes(rng.integers(0, 256, 200, dtype=np.uint8)),
    }


# The old parser predates the 2017 layout's `video_id`: it must read such a record as it reads the same
# record with the feature named `id`.
def _reference_bytes(cases: dict[str, bytes], case: str) -> bytes:
    return cases["id_2017_as_2018"] if case == "id_2017" else cases[case]


def _outcome(parse, data: bytes, **kwargs):
    try:
        return "ok", parse(data, **kwargs)
    except InvalidRecordError as e:
        return "invalid", (e.reason, e.video_id)


FRAME_CASES = _frame_cases()
VIDEO_CASES = _video_cases()


@pytest.mark.parametrize("case", sorted(FRAME_CASES))
def test_frame_records_parse_as_the_protobuf_parser_parses_them(case):
    kwargs = dict(max_frames=8, num_classes=NUM_CLASSES)
    old_status, old = _outcome(legacy.parse_frame_example, _reference_bytes(FRAME_CASES, case), **kwargs)
    new_status, new = _outcome(records.parse_frame_example, FRAME_CASES[case], **kwargs)
    assert new_status == old_status, (old, new)
    if new_status == "invalid":
        assert new == old  # same reason, same video id
        return
    assert new["rgb"].dtype == np.uint8 and new["audio"].dtype == np.uint8
    for key in ("id", "labels", "num_frames"):
        assert new[key] == old[key], key
    np.testing.assert_allclose(records.dequantize(new["rgb"]), old["rgb"], atol=1e-6)
    np.testing.assert_allclose(records.dequantize(new["audio"]), old["audio"], atol=1e-6)
    for field in records.SEGMENT_FIELDS:
        assert new.get(field) == old.get(field), field


@pytest.mark.parametrize("case", sorted(VIDEO_CASES))
def test_video_records_parse_as_the_protobuf_parser_parses_them(case):
    reference = _reference_bytes(VIDEO_CASES, case)
    old_status, old = _outcome(legacy.parse_video_example, reference, num_classes=NUM_CLASSES)
    new_status, new = _outcome(records.parse_video_example, VIDEO_CASES[case], num_classes=NUM_CLASSES)
    assert new_status == old_status, (old, new)
    if new_status == "invalid":
        assert new == old
        return
    assert new["id"] == old["id"] and new["labels"] == old["labels"]
    np.testing.assert_array_equal(new["mean_rgb"], old["mean_rgb"])
    np.testing.assert_array_equal(new["mean_audio"], old["mean_audio"])


def test_the_cases_cover_every_kind_of_frame_level_rejection():
    reasons = set()
    for data in FRAME_CASES.values():
        status, value = _outcome(records.parse_frame_example, data, max_frames=8, num_classes=NUM_CLASSES)
        if status == "invalid":
            reasons.add(value[0])
    # Every frame-level reason but the video-level-only ones.
    video_only = {"missing_mean_rgb", "missing_mean_audio", "bad_feature_length", "non_finite_values"}
    assert reasons >= set(records.INVALID_REASONS) - video_only - {"bad_segments", "bad_id"}
