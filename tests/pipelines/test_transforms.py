"""Reading TFRecords with CRC checks, parsing into examples or dead letters, and formatting output rows."""

import base64

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from scoring_data import NUM_CLASSES, bad_frame_records, frame_record, good_frame_records, write_tfrecords

from pipelines.transforms import (
    DEAD_LETTER,
    CorruptFileError,
    FormatRows,
    ParseRecords,
    Record,
    RowDicts,
    ScoredBatch,
    read_tfrecord_file,
)


@pytest.fixture(scope="module")
def records():
    return list(good_frame_records(np.random.default_rng(0), 3, prefix="r", max_frames=5).values())


def test_reader_yields_what_tensorflow_reads_with_each_record_offset(records, tmp_path):
    path = write_tfrecords(tmp_path / "x.tfrecord", records)
    read = list(read_tfrecord_file(str(path)))
    assert [r.data for r in read] == [t.numpy() for t in tf.data.TFRecordDataset(str(path))]
    # Framing: 8-byte length + 4-byte CRC, payload, 4-byte CRC.
    assert [r.byte_offset for r in read] == [0, 16 + len(records[0]), 32 + len(records[0]) + len(records[1])]
    assert {r.source_file for r in read} == {str(path)}


def test_reader_decompresses_gzip_files(records, tmp_path):
    path = str(tmp_path / "x.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in records:
            writer.write(record)
    assert [r.data for r in read_tfrecord_file(path)] == records


def test_reader_reports_a_truncated_header_with_the_file_and_offset(records, tmp_path):
    raw = write_tfrecords(tmp_path / "x.tfrecord", records[:1]).read_bytes()
    path = tmp_path / "cut.tfrecord"
    path.write_bytes(raw + raw[:5])
    first, error = list(read_tfrecord_file(str(path)))
    assert isinstance(first, Record)
    assert isinstance(error, CorruptFileError) and error.byte_offset == len(raw) and error.data is None
    assert str(path) in str(error) and "record header" in str(error)


def test_reader_stops_at_a_length_that_fails_its_crc(records, tmp_path):
    raw = bytearray(write_tfrecords(tmp_path / "x.tfrecord", records).read_bytes())
    raw[0] ^= 0x01  # the first record's length no longer matches its CRC
    path = tmp_path / "bad-length.tfrecord"
    path.write_bytes(bytes(raw))
    [error] = list(read_tfrecord_file(str(path)))
    assert isinstance(error, CorruptFileError) and error.byte_offset == 0
    assert "bad-length.tfrecord" in str(error) and "CRC" in str(error)


def test_parse_records_routes_every_bad_record_to_the_dead_letter(records):
    bad = bad_frame_records(np.random.default_rng(1))
    # A label outside the model's classes is ground truth from another vocabulary, not a bad record:
    # the video is scored with its labels kept as they are.
    out_of_vocabulary = bad.pop("label_out_of_range")
    inputs = [Record("good.tfrecord", i, data) for i, data in enumerate(records)]
    inputs += [Record("bad.tfrecord", 100 + i, data) for i, (_, data) in enumerate(bad.values())]
    inputs.append(Record("other.tfrecord", 0, out_of_vocabulary[1]))
    with BeamTestPipeline() as p:
        parsed = p | beam.Create(inputs) | ParseRecords(num_classes=NUM_CLASSES)
        examples = parsed.examples | "Summarise" >> beam.Map(
            lambda e: (e["id"], e["num_frames"], e["rgb"].shape, e["rgb"].dtype.name)
        )
        frames = [
            len(tf.train.SequenceExample.FromString(r).feature_lists.feature_list["rgb"].feature)
            for r in records + [out_of_vocabulary[1]]
        ]
        ids = [f"r{i:03d}" for i in range(len(records))] + [out_of_vocabulary[0]]
        assert_that(
            examples,
            equal_to([(vid, n, (n, 1024), "uint8") for vid, n in zip(ids, frames, strict=True)]),
            label="Examples",
        )
        dead = parsed[DEAD_LETTER] | beam.Map(
            lambda d: (d["reason"], d["id"], d["source_file"], base64.b64decode(d["record_base64"]))
        )
        assert_that(
            dead,
            equal_to([(reason, vid, "bad.tfrecord", data) for reason, (vid, data) in bad.items()]),
            label="DeadLetters",
        )


def test_parse_hands_the_stored_uint8_frames_through():
    rgb = np.array([[0, 255] * 512, [7] * 1024], dtype=np.uint8)
    audio = np.full((2, 128), 128, dtype=np.uint8)
    with BeamTestPipeline() as p:
        parsed = (
            p | beam.Create([Record("f", 0, frame_record("q", [], rgb, audio))]) | ParseRecords(num_classes=3)
        )
        values = parsed.examples | beam.Map(
            lambda e: (e["rgb"].tolist(), e["audio"].tolist(), e["num_frames"])
        )
        assert_that(values, equal_to([(rgb.tolist(), audio.tolist(), 2)]))


def test_format_rows_keeps_the_top_k_best_first_with_ties_to_the_lower_class():
    predictions = np.array([[0.1, 0.7, 0.3, 0.7, 0.05], [0.9, 0.0, 0.2, 0.1, 0.3]], dtype=np.float32)
    embeddings = np.array([[0.25, -1.5, 3.0], [1.0, 2.0, -0.5]], dtype=np.float32)
    examples = [{"id": "a", "labels": [3, 1], "num_frames": 12}, {"id": "b", "labels": [], "num_frames": 3}]
    batch = ScoredBatch(examples, predictions, embeddings)
    with BeamTestPipeline() as p:
        tables = p | beam.Create([batch]) | FormatRows(top_k=3, model_version="m@1", embedding_size=3)
        assert_that(tables | beam.Map(lambda t: t.num_rows), equal_to([2]), label="OneTablePerBatch")
        rows = tables | RowDicts()
        assert_that(
            rows,
            equal_to(
                [
                    {
                        "id": "a",
                        "num_frames": 12,
                        "labels": [3, 1],
                        "top_classes": [1, 3, 2],
                        "top_scores": [
                            float(np.float32(0.7)),
                            float(np.float32(0.7)),
                            float(np.float32(0.3)),
                        ],
                        "embedding": [0.25, -1.5, 3.0],
                        "model_version": "m@1",
                    },
                    {
                        "id": "b",
                        "num_frames": 3,
                        "labels": [],
                        "top_classes": [0, 4, 2],
                        "top_scores": [
                            float(np.float32(0.9)),
                            float(np.float32(0.3)),
                            float(np.float32(0.2)),
                        ],
                        "embedding": [1.0, 2.0, -0.5],
                        "model_version": "m@1",
                    },
                ]
            ),
            label="Rows",
        )


def test_corrupt_file_error_survives_pickling():
    import pickle

    error = CorruptFileError("gs://b/f.tfrecord", 42, "is truncated", data=b"xy")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.byte_offset, copy.data, str(copy)) == (error.path, 42, b"xy", str(error))


def _bucketed(lengths, boundaries, batch_size):
    """Runs the bucketing DoFn over one bundle of videos with these frame counts; returns the order out."""
    from apache_beam.transforms.window import GlobalWindow

    from pipelines.transforms import BucketByLength

    fn = BucketByLength(boundaries, batch_size=batch_size)._fn
    fn.start_bundle()
    out = []
    for i, n in enumerate(lengths):
        out += list(fn.process({"id": f"v{i}", "num_frames": n}, window=GlobalWindow()))
    out += [w.value for w in fn.finish_bundle()]
    return [(e["id"], e["num_frames"]) for e in out]


def test_bucket_by_length_emits_full_buckets_as_runs_and_the_rest_sorted():
    # Boundaries [100, 200]: buckets <100, 100-199, >=200. Batch size 2.
    out = _bucketed([250, 50, 150, 300, 60, 120, 10], [100, 200], 2)
    # Each bucket leaves as one run (in arrival order) when it fills: >=200 at the 4th video, <100 at the
    # 5th, 100-199 at the 6th; the video left over when the bundle ends comes last.
    assert out == [("v0", 250), ("v3", 300), ("v1", 50), ("v4", 60), ("v2", 150), ("v5", 120), ("v6", 10)]


def test_bucket_by_length_pads_a_mixed_stream_less_and_keeps_every_video():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.choice([30, 150, 300], size=200)]
    out = _bucketed(lengths, [120, 240], 8)
    assert sorted(out) == sorted((f"v{i}", n) for i, n in enumerate(lengths))

    def padded_slots(order):
        return sum(len(b) * max(b) for b in (order[i : i + 8] for i in range(0, len(order), 8)))

    # Arrival order pads nearly every batch to 300 frames; bucketed, only the last partial batch mixes.
    assert padded_slots(lengths) >= 290 * len(lengths)
    assert padded_slots([n for _, n in out]) <= sum(lengths) + 8 * 300


def test_bucket_by_length_refuses_bad_settings():
    from pipelines.transforms import BucketByLength

    with pytest.raises(ValueError, match="positive frame counts"):
        BucketByLength([0, 100], batch_size=4)
    with pytest.raises(ValueError, match="batch_size=0"):
        BucketByLength([100], batch_size=0)
