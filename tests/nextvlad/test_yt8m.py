"""YouTube-8M format: parsers, writers, tf.data reader, checked against protos built independently here."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from nextvlad import yt8m
from nextvlad.layers import FramePreprocessing
from nextvlad.yt8m import InvalidRecordError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VIDEO_LEVEL = DATA / "yt8m-2018-video-level" / "validate0000.tfrecord"
EIGENVALS = DATA / "yt8m-pca" / "eigenvals.npy"


# ------------------------------------------------------------------------------------------------
# Independent reference writers: plain protos, following the dataset spec.
# ------------------------------------------------------------------------------------------------


def _bytes(*values: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def proto_frame_example(
    video_id, labels, rgb_q, audio_q, *, context=None, drop=()
) -> tf.train.SequenceExample:
    ctx = {"id": _bytes(video_id.encode()), "labels": _ints(labels)}
    ctx.update(context or {})
    lists = {
        "rgb": tf.train.FeatureList(feature=[_bytes(bytes(row)) for row in rgb_q]),
        "audio": tf.train.FeatureList(feature=[_bytes(bytes(row)) for row in audio_q]),
    }
    for key in drop:
        ctx.pop(key, None)
        lists.pop(key, None)
    return tf.train.SequenceExample(
        context=tf.train.Features(feature=ctx), feature_lists=tf.train.FeatureLists(feature_list=lists)
    )


def proto_video_example(video_id, labels, mean_rgb, mean_audio, *, context=None, drop=()) -> tf.train.Example:
    feats = {
        "id": _bytes(video_id.encode()),
        "labels": _ints(labels),
        "mean_rgb": _floats(mean_rgb),
        "mean_audio": _floats(mean_audio),
    }
    feats.update(context or {})
    for key in drop:
        feats.pop(key)
    return tf.train.Example(features=tf.train.Features(feature=feats))


def reference_dequantize(q) -> np.ndarray:
    # The formula from the dataset's reader, in float64.
    return np.asarray(q, dtype=np.float64) * (4.0 / 255.0) + (4.0 / 512.0 - 2.0)


def random_frames(rng, num_frames):
    return (
        rng.integers(0, 256, (num_frames, 1024), dtype=np.uint8),
        rng.integers(0, 256, (num_frames, 128), dtype=np.uint8),
    )


def write(path: Path, records) -> str:
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r if isinstance(r, bytes) else r.SerializeToString())
    return str(path)


# ------------------------------------------------------------------------------------------------
# Quantization
# ------------------------------------------------------------------------------------------------


def test_dequantize_matches_hand_computed_values():
    q = np.array([0, 1, 128, 255], dtype=np.uint8)
    # 0 -> -2 + 4/512; 1 -> that + 4/255; 128 -> 512/255 - 2 + 1/128; 255 -> 4 - 2 + 1/128.
    expected = [-1.9921875, -1.9921875 + 0.01568627451, 0.01565563725, 2.0078125]
    got = yt8m.dequantize(q)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # The models dequantize inside (their preprocessing layer): same values from the same uint8 frames.
    layer = FramePreprocessing(max_frames=4)
    rgb, audio, _ = layer(np.tile(q, 256)[None, None, :], np.tile(q, 32)[None, None, :], np.array([1]))
    np.testing.assert_allclose(np.asarray(rgb)[0, 0, :4], expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(audio)[0, 0, :4], expected, atol=1e-6)


def test_quantize_clips_rounds_and_inverts_dequantize():
    # (x + 2) * 63.75: -5 clips to 0; 0 -> 127.5 rounds half to even -> 128; 5 clips to 255;
    # 1 -> 191.25 -> 191; -1.9921875 -> 0.498 -> 0.
    x = np.array([-5.0, -2.0, 0.0, 1.0, 2.0, 5.0, -1.9921875], dtype=np.float32)
    q = yt8m.quantize(x)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, [0, 0, 128, 191, 255, 255, 0])
    every_q = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(yt8m.quantize(yt8m.dequantize(every_q)), every_q)


# ------------------------------------------------------------------------------------------------
# Record parsers
# ------------------------------------------------------------------------------------------------


def test_parse_frame_example_gives_dequantized_frames():
    rng = np.random.default_rng(0)
    rgb_q, audio_q = random_frames(rng, 7)
    rgb_q[0, :3] = [0, 255, 128]
    record = proto_frame_example("vid-1", [3, 0, 3861], rgb_q, audio_q).SerializeToString()

    parsed = yt8m.parse_frame_example(record)

    assert parsed["id"] == "vid-1"
    assert parsed["labels"] == [3, 0, 3861]
    assert parsed["num_frames"] == 7
    # Frames come back as stored (uint8); the model dequantizes them.
    assert parsed["rgb"].dtype == np.uint8 and parsed["rgb"].shape == (7, 1024)
    assert parsed["audio"].dtype == np.uint8 and parsed["audio"].shape == (7, 128)
    np.testing.assert_array_equal(parsed["rgb"][0, :3], [0, 255, 128])
    np.testing.assert_array_equal(parsed["rgb"], rgb_q)
    np.testing.assert_array_equal(parsed["audio"], audio_q)


def test_parse_frame_example_truncates_to_max_frames():
    rng = np.random.default_rng(1)
    rgb_q, audio_q = random_frames(rng, 310)
    record = proto_frame_example("long", [1], rgb_q, audio_q).SerializeToString()

    parsed = yt8m.parse_frame_example(record)
    assert parsed["num_frames"] == 300 and parsed["rgb"].shape == (300, 1024)
    np.testing.assert_array_equal(parsed["rgb"], rgb_q[:300])

    short = yt8m.parse_frame_example(record, max_frames=5)
    assert short["num_frames"] == 5 and short["audio"].shape == (5, 128)
    np.testing.assert_array_equal(short["audio"], audio_q[:5])
    assert yt8m.parse_frame_example(record, max_frames=None)["num_frames"] == 310


def test_frames_beyond_max_frames_are_not_validated():
    rng = np.random.default_rng(11)
    rgb_q, audio_q = random_frames(rng, 6)
    record = proto_frame_example("tail", [1], rgb_q, audio_q)
    record.feature_lists.feature_list["rgb"].feature[5].bytes_list.value[0] = b"\x00" * 1000
    data = record.SerializeToString()

    parsed = yt8m.parse_frame_example(data, max_frames=5)
    np.testing.assert_array_equal(parsed["rgb"], rgb_q[:5])
    with pytest.raises(InvalidRecordError, match="rgb frame 5") as info:
        yt8m.parse_frame_example(data, max_frames=6)
    assert info.value.reason == "bad_frame_length"


def test_parse_frame_example_reads_unlabeled_and_segment_records():
    rng = np.random.default_rng(2)
    segments = {
        "segment_start_times": _ints([5, 40]),
        "segment_labels": _ints([7, 9]),
        "segment_scores": _floats([1.0, 0.0]),
    }
    record = proto_frame_example("seg", [], *random_frames(rng, 45), context=segments, drop=("labels",))
    parsed = yt8m.parse_frame_example(record.SerializeToString())
    assert parsed["labels"] == []
    assert parsed["segment_start_times"] == [5, 40]
    assert parsed["segment_labels"] == [7, 9]
    assert parsed["segment_scores"] == [1.0, 0.0]
    # Segment fields are kept even when max_frames keeps fewer frames than a segment's start.
    assert yt8m.parse_frame_example(record.SerializeToString(), max_frames=10)["segment_start_times"] == [
        5,
        40,
    ]


@pytest.mark.parametrize(
    ("segments", "match"),
    [
        ({"segment_start_times": [0, 5], "segment_labels": [1], "segment_scores": [1.0, 0.0]}, "lengths"),
        ({"segment_start_times": [0, 12], "segment_labels": [1, 2], "segment_scores": [1.0, 0.0]}, "outside"),
        ({"segment_start_times": [-5], "segment_labels": [1], "segment_scores": [1.0]}, "outside"),
    ],
)
def test_inconsistent_segment_fields_are_rejected(segments, match):
    rng = np.random.default_rng(21)
    context = {
        name: (_floats(values) if name == "segment_scores" else _ints(values))
        for name, values in segments.items()
    }
    record = proto_frame_example("seg", [1], *random_frames(rng, 12), context=context)
    with pytest.raises(InvalidRecordError, match=match) as info:
        yt8m.parse_frame_example(record.SerializeToString())
    assert info.value.reason == "bad_segments" and info.value.video_id == "seg"


def test_parse_video_example():
    rng = np.random.default_rng(3)
    mean_rgb = rng.normal(size=1024).astype(np.float32)
    mean_audio = rng.normal(size=128).astype(np.float32)
    record = proto_video_example("vv", [12, 4], mean_rgb, mean_audio).SerializeToString()

    parsed = yt8m.parse_video_example(record)

    assert parsed["id"] == "vv" and parsed["labels"] == [12, 4]
    np.testing.assert_array_equal(parsed["mean_rgb"], mean_rgb)
    np.testing.assert_array_equal(parsed["mean_audio"], mean_audio)
    assert parsed["mean_rgb"].dtype == np.float32


# One malformed record per failure mode: (builder, parser, expected reason, id the error should carry).
def _frame(**kw):
    rng = np.random.default_rng(4)
    rgb_q, audio_q = kw.pop("frames", random_frames(rng, 4))
    return proto_frame_example(kw.pop("video_id", "bad"), kw.pop("labels", [1]), rgb_q, audio_q, **kw)


def _bad_rgb_length():
    rng = np.random.default_rng(5)
    _, audio_q = random_frames(rng, 2)
    return _frame(frames=(rng.integers(0, 256, (2, 1000), dtype=np.uint8), audio_q))


def _two_values_per_frame():
    record = _frame()
    record.feature_lists.feature_list["audio"].feature[1].bytes_list.value.append(b"\x00" * 128)
    return record


def _float_frames():
    record = _frame()
    record.feature_lists.feature_list["rgb"].feature[0].CopyFrom(_floats([0.5] * 1024))
    return record


def _mismatched_counts():
    rng = np.random.default_rng(6)
    rgb_q, _ = random_frames(rng, 4)
    _, audio_q = random_frames(rng, 3)
    return _frame(frames=(rgb_q, audio_q))


def _no_frames():
    return _frame(frames=(np.zeros((0, 1024), np.uint8), np.zeros((0, 128), np.uint8)))


def _video(**kw):
    return proto_video_example("bad", kw.pop("labels", [1]), [0.0] * 1024, [0.0] * 128, **kw)


BAD_RECORDS = {
    "garbage bytes": (lambda: b"\xff\xfe\xfd not a proto", "frame", "not_an_example", None),
    "empty record": (lambda: b"", "frame", "not_an_example", None),
    "empty video record": (lambda: b"", "video", "not_an_example", None),
    "missing id": (lambda: _frame(drop=("id",)), "frame", "missing_id", None),
    "empty id": (lambda: _frame(context={"id": _bytes(b"")}), "frame", "bad_id", None),
    "non-UTF-8 id": (lambda: _video(context={"id": _bytes(b"\xff\xfe")}), "video", "bad_id", None),
    "two ids": (lambda: _frame(context={"id": _bytes(b"a", b"b")}), "frame", "bad_feature_type", None),
    "missing rgb": (lambda: _frame(drop=("rgb",)), "frame", "missing_rgb", "bad"),
    "missing audio": (lambda: _frame(drop=("audio",)), "frame", "missing_audio", "bad"),
    "rgb frame of 1000 bytes": (_bad_rgb_length, "frame", "bad_frame_length", "bad"),
    "two values in a frame": (_two_values_per_frame, "frame", "bad_frame_length", "bad"),
    "float frame": (_float_frames, "frame", "bad_feature_type", "bad"),
    "4 rgb vs 3 audio frames": (_mismatched_counts, "frame", "frame_count_mismatch", "bad"),
    "zero frames": (_no_frames, "frame", "no_frames", "bad"),
    "label 3862": (lambda: _frame(labels=[1, 3862]), "frame", "label_out_of_range", "bad"),
    "negative label": (lambda: _frame(labels=[-1]), "frame", "label_out_of_range", "bad"),
    "video label 5000": (lambda: _video(labels=[5000]), "video", "label_out_of_range", "bad"),
    "video record as frame": (_video, "frame", "wrong_record_kind", "bad"),
    "frame record as video": (_frame, "video", "wrong_record_kind", "bad"),
    "missing mean_rgb": (lambda: _video(drop=("mean_rgb",)), "video", "missing_mean_rgb", "bad"),
    "missing mean_audio": (lambda: _video(drop=("mean_audio",)), "video", "missing_mean_audio", "bad"),
    "short mean_rgb": (
        lambda: proto_video_example("bad", [1], [0.0] * 1000, [0.0] * 128),
        "video",
        "bad_feature_length",
        "bad",
    ),
    "nan mean_audio": (
        lambda: proto_video_example("bad", [1], [0.0] * 1024, [float("nan")] * 128),
        "video",
        "non_finite_values",
        "bad",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_records_raise_invalid_record_error_with_reason(case):
    build, kind, reason, video_id = BAD_RECORDS[case]
    record = build()
    data = record if isinstance(record, bytes) else record.SerializeToString()
    parse = yt8m.parse_frame_example if kind == "frame" else yt8m.parse_video_example

    with pytest.raises(InvalidRecordError) as info:
        parse(data)

    err = info.value
    assert err.reason == reason
    assert err.reason in yt8m.INVALID_REASONS
    assert err.video_id == video_id
    assert isinstance(err, ValueError)
    if reason == "wrong_record_kind":
        other = "video" if kind == "frame" else "frame"
        assert f"input_format={other}" in str(err)
    # The dead letter may ship errors between Beam workers.
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.reason, clone.video_id, str(clone)) == (err.reason, err.video_id, str(err))


def test_label_range_follows_num_classes():
    record = _frame(labels=[9]).SerializeToString()
    assert yt8m.parse_frame_example(record, num_classes=10)["labels"] == [9]
    with pytest.raises(InvalidRecordError, match="outside \\[0, 9\\)"):
        yt8m.parse_frame_example(record, num_classes=9)


# ------------------------------------------------------------------------------------------------
# Fast writers
# ------------------------------------------------------------------------------------------------


def _tf_parse_frame(data: bytes) -> dict[str, np.ndarray]:
    context, lists = tf.io.parse_single_sequence_example(
        data,
        context_features={
            "id": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.VarLenFeature(tf.int64),
            "segment_start_times": tf.io.VarLenFeature(tf.int64),
            "segment_scores": tf.io.VarLenFeature(tf.float32),
        },
        sequence_features={
            "rgb": tf.io.FixedLenSequenceFeature([], tf.string),
            "audio": tf.io.FixedLenSequenceFeature([], tf.string),
        },
    )
    out = {k: (v.values if isinstance(v, tf.SparseTensor) else v).numpy() for k, v in context.items()}
    out.update({k: v.numpy() for k, v in lists.items()})
    return out


@pytest.mark.parametrize("num_frames,labels", [(1, []), (150, [0, 17, 3861]), (301, [2**40])])
def test_fast_frame_writer_matches_protos(num_frames, labels):
    rng = np.random.default_rng(num_frames)
    rgb_q, audio_q = random_frames(rng, num_frames)
    segments = {"segment_start_times": [0, 150], "segment_labels": [3, 4], "segment_scores": [1.0, 0.25]}
    fast = yt8m.frame_example_bytes("id-é", labels, rgb_q, audio_q, segments=segments)
    reference = proto_frame_example(
        "id-é",
        labels,
        rgb_q,
        audio_q,
        context={
            "segment_start_times": _ints([0, 150]),
            "segment_labels": _ints([3, 4]),
            "segment_scores": _floats([1.0, 0.25]),
        },
    )

    assert tf.train.SequenceExample.FromString(fast) == reference
    ours, theirs = _tf_parse_frame(fast), _tf_parse_frame(reference.SerializeToString())
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert len(ours["rgb"]) == num_frames and len(ours["rgb"][0]) == 1024


def test_fast_video_writer_matches_protos():
    rng = np.random.default_rng(7)
    mean_rgb = rng.normal(size=1024).astype(np.float32)
    mean_audio = rng.normal(size=128).astype(np.float32)
    fast = yt8m.video_example_bytes("v", [5, 6], mean_rgb, mean_audio)
    reference = proto_video_example("v", [5, 6], mean_rgb, mean_audio)

    assert tf.train.Example.FromString(fast) == reference
    spec = {
        "id": tf.io.FixedLenFeature([], tf.string),
        "labels": tf.io.VarLenFeature(tf.int64),
        "mean_rgb": tf.io.FixedLenFeature([1024], tf.float32),
        "mean_audio": tf.io.FixedLenFeature([128], tf.float32),
    }
    ours, theirs = (
        tf.io.parse_single_example(fast, spec),
        tf.io.parse_single_example(reference.SerializeToString(), spec),
    )
    assert ours["id"].numpy() == b"v"
    np.testing.assert_array_equal(ours["labels"].values.numpy(), theirs["labels"].values.numpy())
    np.testing.assert_array_equal(ours["mean_rgb"].numpy(), mean_rgb)
    np.testing.assert_array_equal(ours["mean_audio"].numpy(), theirs["mean_audio"].numpy())


def test_fast_frame_writer_rejects_unquantized_or_misshaped_frames():
    rgb = np.zeros((3, 1024), np.uint8)
    audio = np.zeros((3, 128), np.uint8)
    with pytest.raises(ValueError, match="quantize"):
        yt8m.frame_example_bytes("x", [], rgb.astype(np.float32), audio)
    with pytest.raises(ValueError, match=r"\[T, 128\]"):
        yt8m.frame_example_bytes("x", [], rgb, np.zeros((3, 127), np.uint8))
    with pytest.raises(ValueError, match="3 frames but audio has 2"):
        yt8m.frame_example_bytes("x", [], rgb, audio[:2])


def test_write_tfrecords_count_and_peek(tmp_path):
    rng = np.random.default_rng(8)
    records = [yt8m.frame_example_bytes(f"v{i}", [i], *random_frames(rng, 2 + i)) for i in range(5)]
    assert yt8m.write_tfrecords(str(tmp_path / "sub" / "a.tfrecord"), records[:3]) == 3
    assert yt8m.write_tfrecords(str(tmp_path / "sub" / "b.tfrecord"), records[3:]) == 2

    assert yt8m.count_records(str(tmp_path / "sub" / "*.tfrecord")) == 5
    assert yt8m.peek_records(str(tmp_path / "sub" / "*.tfrecord"), n=4) == records[:4]
    assert [yt8m.parse_frame_example(r)["id"] for r in yt8m.peek_records(str(tmp_path / "sub" / "b*"))] == [
        "v3",
        "v4",
    ]

    truncated = tmp_path / "truncated.tfrecord"
    truncated.write_bytes((tmp_path / "sub" / "a.tfrecord").read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        yt8m.count_records(str(truncated))
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        yt8m.count_records(str(tmp_path / "nothing-here*"))


# ------------------------------------------------------------------------------------------------
# tf.data reader
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_corpus(tmp_path_factory):
    """Two files of frame-level records of varied lengths, written with plain protos."""
    rng = np.random.default_rng(9)
    root = tmp_path_factory.mktemp("frames")
    lengths = [3, 1, 8, 5, 2, 12, 4]
    frames = [random_frames(rng, n) for n in lengths]
    records = [
        proto_frame_example(f"v{i}", [i, 2 * i + 1], rgb_q, audio_q).SerializeToString()
        for i, (rgb_q, audio_q) in enumerate(frames)
    ]
    write(root / "part-0.tfrecord", records[:4])
    write(root / "part-1.tfrecord", records[4:])
    return str(root / "part-*.tfrecord"), records, frames


def test_make_dataset_frame_level_matches_eager_parser(frame_corpus):
    pattern, records, _ = frame_corpus
    expected = {p["id"]: p for p in (yt8m.parse_frame_example(r, max_frames=10) for r in records)}
    ds = yt8m.make_dataset(pattern, batch_size=3, num_classes=20, max_frames=10, include_ids=True)

    seen = []
    for features, labels in ds:
        padded_len = int(features["num_frames"].numpy().max())  # padded to the batch's own longest video
        assert features["rgb"].shape[1:] == (padded_len, 1024)
        assert features["audio"].shape[1:] == (padded_len, 128)
        assert features["num_frames"].dtype == tf.int32 and labels.shape[1] == 20
        for i, vid in enumerate(features["id"].numpy()):
            ref = expected[vid.decode()]
            n = ref["num_frames"]
            assert features["num_frames"][i] == n
            # Same float32 formula on both paths: bit-identical.
            np.testing.assert_array_equal(features["rgb"][i, :n], ref["rgb"])
            np.testing.assert_array_equal(features["audio"][i, :n], ref["audio"])
            assert not np.any(features["rgb"][i, n:]) and not np.any(features["audio"][i, n:])
            multi_hot = np.zeros(20, np.float32)
            multi_hot[ref["labels"]] = 1
            np.testing.assert_array_equal(labels[i], multi_hot)
            seen.append(vid.decode())
    assert sorted(seen) == sorted(expected)  # every record exactly once; v5 (12 frames) truncated to 10
    assert expected["v5"]["num_frames"] == 10


def test_make_dataset_shuffle_repeat_and_drop_remainder(frame_corpus):
    pattern, _, _ = frame_corpus
    ds = yt8m.make_dataset(
        pattern,
        batch_size=4,
        num_classes=20,
        shuffle=True,
        repeat=True,
        seed=1,
        drop_remainder=True,
        include_ids=True,
    )
    batches = list(ds.take(7))  # 28 records = 4 epochs of 7
    assert all(f["rgb"].shape[0] == 4 for f, _ in batches)
    ids = [v.decode() for f, _ in batches for v in f["id"].numpy()]
    assert sorted(set(ids)) == sorted(f"v{i}" for i in range(7))
    assert ids != sorted(ids)


def test_make_dataset_feeds_uint8_and_the_model_reverse_whitens(frame_corpus, tmp_path):
    pattern, _, frames = frame_corpus
    eig = np.linspace(0.0, 3.0, 2048, dtype=np.float32).reshape(2048, 1)
    path = str(tmp_path / "eigenvals.npy")
    np.save(path, eig)
    scale = yt8m.reverse_whitening_scale(path)
    np.testing.assert_allclose(scale, np.sqrt(np.linspace(0.0, 3.0, 2048)[:1024]) + 1e-4, rtol=1e-6)

    ds = yt8m.make_dataset(pattern, batch_size=7, num_classes=20, include_ids=True)
    features, _ = next(iter(ds))
    assert features["rgb"].dtype == tf.uint8 and features["audio"].dtype == tf.uint8
    layer = FramePreprocessing(reverse_whitening=True)
    layer.set_rgb_scale(scale)
    rgb, audio, _ = (np.asarray(x) for x in layer(features["rgb"], features["audio"], features["num_frames"]))
    assert features["rgb"].shape[0] == len(frames)
    for i, vid in enumerate(features["id"].numpy()):
        rgb_q, audio_q = frames[int(vid[1:])]
        n = len(rgb_q)
        np.testing.assert_array_equal(features["rgb"][i, :n], rgb_q)
        assert not np.any(features["rgb"][i, n:])  # uint8 zero padding
        expected = (reference_dequantize(rgb_q) - 4 / 512) * (
            np.sqrt(np.linspace(0.0, 3.0, 2048)[:1024]) + 1e-4
        )
        np.testing.assert_allclose(rgb[i, :n], expected, atol=1e-5)
        np.testing.assert_allclose(audio[i, :n], reference_dequantize(audio_q), atol=1e-6)
        assert not np.any(rgb[i, n:]) and not np.any(audio[i, n:])  # padded frames are exactly 0


def test_reverse_whiten_formula_and_shape_errors(tmp_path):
    rgb = np.array([[4 / 512, 1.0]], dtype=np.float32)
    scale = np.array([2.0, 3.0], dtype=np.float32)
    np.testing.assert_allclose(yt8m.reverse_whiten(rgb, scale), [[0.0, (1 - 4 / 512) * 3]], rtol=1e-6)

    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((512, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(512, 2\).*eigenvals.npy"):
        yt8m.reverse_whitening_scale(str(bad))


@pytest.mark.skipif(not EIGENVALS.exists(), reason="shared YouTube-8M PCA data not available")
def test_reverse_whitening_scale_from_dataset_eigenvals():
    scale = yt8m.reverse_whitening_scale(str(EIGENVALS))
    eig = np.load(EIGENVALS)
    assert scale.shape == (1024,) and scale.dtype == np.float32
    np.testing.assert_allclose(scale, np.sqrt(eig[:1024, 0].astype(np.float64)) + 1e-4, rtol=1e-6)


def test_make_dataset_label_out_of_range_is_a_clear_error(frame_corpus):
    pattern, _, _ = frame_corpus  # labels go up to 13
    ds = yt8m.make_dataset(pattern, batch_size=8, num_classes=5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes=5"):
        for _ in ds:
            pass


@pytest.mark.parametrize(
    "build,message",
    [
        (_bad_rgb_length, "exactly 1024 bytes"),
        (_mismatched_counts, "same number of frames"),
        (_no_frames, "no rgb"),
    ],
)
def test_make_dataset_bad_frames_are_clear_errors(tmp_path, build, message):
    path = write(tmp_path / "bad.tfrecord", [_frame(labels=[0]), build()])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        next(iter(yt8m.make_dataset(path, batch_size=2, num_classes=20)))


def test_make_dataset_wrong_kind_and_missing_files(frame_corpus, tmp_path):
    pattern, _, _ = frame_corpus
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_format=frame"):
        next(iter(yt8m.make_dataset(pattern, input_format="video", batch_size=2, num_classes=20)))
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        yt8m.make_dataset(str(tmp_path / "no-such-dir" / "*.tfrecord"), batch_size=2)
    with pytest.raises(ValueError, match="input_format"):
        yt8m.make_dataset(pattern, input_format="frames", batch_size=2)


def test_make_dataset_video_level(tmp_path):
    rng = np.random.default_rng(10)
    means = [
        (rng.normal(size=1024).astype(np.float32), rng.normal(size=128).astype(np.float32)) for _ in range(5)
    ]
    path = write(
        tmp_path / "video.tfrecord",
        [proto_video_example(f"v{i}", [i], r, a) for i, (r, a) in enumerate(means)],
    )
    batches = list(yt8m.make_dataset(path, input_format="video", batch_size=3, num_classes=8))
    assert [b[0]["mean_rgb"].shape[0] for b in batches] == [3, 2]
    mean_rgb = np.concatenate([b[0]["mean_rgb"] for b in batches])
    mean_audio = np.concatenate([b[0]["mean_audio"] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(mean_rgb, np.stack([m[0] for m in means]))
    np.testing.assert_array_equal(mean_audio, np.stack([m[1] for m in means]))
    np.testing.assert_array_equal(labels, np.eye(8, dtype=np.float32)[:5])
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_format=video"):
        next(iter(yt8m.make_dataset(path, input_format="frame", batch_size=2, num_classes=8)))


# ------------------------------------------------------------------------------------------------
# Real YouTube-8M video-level records
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not VIDEO_LEVEL.exists(), reason="shared YouTube-8M data not available")
def test_real_video_level_records():
    path = str(VIDEO_LEVEL)
    count = yt8m.count_records(path)
    # 36,916 records over 128 files in the release: a few hundred per file.
    assert 100 < count < 1000

    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert len(records) == count
    parsed = [yt8m.parse_video_example(r) for r in records]
    assert all(isinstance(p["id"], str) and p["id"] for p in parsed)
    assert len({p["id"] for p in parsed}) == count
    assert all(0 <= label < yt8m.NUM_CLASSES for p in parsed for label in p["labels"])
    assert 2.0 < np.mean([len(p["labels"]) for p in parsed]) < 4.5  # ~3 labels per video
    assert all(p["mean_rgb"].shape == (1024,) and p["mean_audio"].shape == (128,) for p in parsed)

    with pytest.raises(InvalidRecordError) as info:
        yt8m.parse_frame_example(records[0])
    assert info.value.reason == "wrong_record_kind" and info.value.video_id == parsed[0]["id"]

    features, labels = next(
        iter(yt8m.make_dataset(path, input_format="video", batch_size=4, include_ids=True))
    )
    for i in range(4):
        assert features["id"][i].numpy().decode() == parsed[i]["id"]
        np.testing.assert_array_equal(features["mean_rgb"][i], parsed[i]["mean_rgb"])
        assert set(np.flatnonzero(labels[i].numpy())) == set(parsed[i]["labels"])
