"""Reading TFRecords with CRC checks, parsing into examples or dead letters, and formatting output rows."""

import base64

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from scoring_data import NUM_CLASSES, bad_frame_records, frame_record, good_frame_records, write_tfrecords

from pipelines.transforms import (
    DEAD_LETTER,
    CorruptFileError,
    FormatRows,
    ParseRecords,
    Record,
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
    inputs = [Record("good.tfrecord", i, data) for i, data in enumerate(records)]
    inputs += [Record("bad.tfrecord", 100 + i, data) for i, (_, data) in enumerate(bad.values())]
    with BeamTestPipeline() as p:
        parsed = p | beam.Create(inputs) | ParseRecords(num_classes=NUM_CLASSES)
        examples = parsed.examples | "Summarise" >> beam.Map(
            lambda e: (e["id"], e["num_frames"], e["rgb"].shape, e["rgb"].dtype.name)
        )
        frames = [
            len(tf.train.SequenceExample.FromString(r).feature_lists.feature_list["rgb"].feature)
            for r in records
        ]
        assert_that(
            examples,
            equal_to([(f"r{i:03d}", n, (n, 1024), "float32") for i, n in enumerate(frames)]),
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


def test_parse_dequantizes_with_the_dataset_formula():
    rgb = np.array([[0, 255] * 512], dtype=np.uint8)
    audio = np.full((1, 128), 128, dtype=np.uint8)
    with BeamTestPipeline() as p:
        parsed = (
            p | beam.Create([Record("f", 0, frame_record("q", [], rgb, audio))]) | ParseRecords(num_classes=3)
        )
        values = parsed.examples | beam.Map(
            lambda e: (float(e["rgb"][0, 0]), float(e["rgb"][0, 1]), float(e["audio"][0, 0]))
        )
        # x = q * 4/255 + 4/512 - 2
        expected = (4 / 512 - 2, 4 + 4 / 512 - 2, 128 * 4 / 255 + 4 / 512 - 2)
        assert_that(
            values,
            lambda got: np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-6),
        )


def test_format_rows_keeps_the_top_k_best_first_with_ties_to_the_lower_class():
    predictions = np.array([0.1, 0.7, 0.3, 0.7, 0.05], dtype=np.float32)
    embedding = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    example = {"id": "a", "labels": [3, 1], "num_frames": 12}
    result = PredictionResult(example, {"predictions": predictions, "embedding": embedding})
    with BeamTestPipeline() as p:
        rows = p | beam.Create([("a", result)]) | FormatRows(top_k=3, model_version="m@1")
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
                    }
                ]
            ),
        )


def test_corrupt_file_error_survives_pickling():
    import pickle

    error = CorruptFileError("gs://b/f.tfrecord", 42, "is truncated", data=b"xy")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.byte_offset, copy.data, str(copy)) == (error.path, 42, b"xy", str(error))
