"""`gs://` input and output, for real, against a local GCS emulator (gcp-storage-emulator)."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from scoring_data import read_rows as read_parquet_rows

pytest_plugins = ["emulators"]


def test_beam_writes_globs_and_reads_gs_files(gcs_emulator, tmp_path):
    records = [np.random.default_rng(i).bytes(40 + i) for i in range(7)]
    prefix = gcs_emulator.url("harness/records")

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as pipeline:
        _ = (
            pipeline
            | "CreateRecords" >> beam.Create(records)
            | "WriteRecords" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=".tfrecord", num_shards=2)
        )
    # The objects are really in the emulator's bucket, seen by google-cloud-storage too.
    names = gcs_emulator.list("harness/")
    assert names == [f"harness/records-0000{i}-of-00002.tfrecord" for i in range(2)]
    matched = FileSystems.match([f"{prefix}-*.tfrecord"])[0].metadata_list
    assert sorted(m.path for m in matched) == [gcs_emulator.url(n) for n in names]

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as pipeline:
        read = pipeline | "ReadRecords" >> beam.io.ReadFromTFRecord(f"{prefix}-*.tfrecord")
        assert_that(read, equal_to(records))

    # A shard downloaded with google-cloud-storage is a TFRecord file a local reader understands.
    import tensorflow as tf

    local = gcs_emulator.download(names[0], tmp_path / "shard.tfrecord")
    assert {r.numpy() for r in tf.data.TFRecordDataset(str(local))} <= set(records)


def test_score_pipeline_reads_and_writes_gs_paths(gcs_emulator, scoring_inputs, tmp_path):
    from pipelines import score

    for path in scoring_inputs.files:
        gcs_emulator.upload(path, f"corpus/{path.name}")
    common = ["--runner=DirectRunner", f"--model={scoring_inputs.model_path}", "--top_k=4", "--num_shards=2"]

    remote = score.run(
        [
            *common,
            f"--input={gcs_emulator.url('corpus/part-*.tfrecord')}",
            f"--output={gcs_emulator.url('out/scores')}",
        ]
    )
    local = score.run(
        [*common, f"--input={scoring_inputs.pattern}", f"--output={tmp_path / 'local' / 'scores'}"]
    )
    assert remote.records_read == remote.videos_scored == len(scoring_inputs.ids)

    names = gcs_emulator.list("out/")
    shards = [f"out/scores-0000{i}-of-00002.parquet" for i in range(2)]
    assert set(shards) <= set(names), names
    assert not [n for n in names if n.endswith(".tmp")], f"the output check left a probe file: {names}"
    (tmp_path / "remote").mkdir()
    for name in shards:
        gcs_emulator.download(name, tmp_path / "remote" / name.split("/")[-1])

    remote_rows = read_parquet_rows(str(tmp_path / "remote" / "scores-*-of-*.parquet"))
    assert [r["id"] for r in remote_rows] == sorted(scoring_inputs.ids)
    assert remote_rows == read_parquet_rows(str(tmp_path / "local" / "scores-*-of-*.parquet"))
    assert local.videos_scored == remote.videos_scored


def test_overwrite_replaces_an_earlier_run_on_gs(gcs_emulator, scoring_inputs, tmp_path):
    from pipelines import score

    output = gcs_emulator.url("rerun/scores")
    common = [
        "--runner=DirectRunner",
        f"--input={scoring_inputs.pattern}",
        f"--model={scoring_inputs.model_path}",
    ]
    score.run([*common, f"--output={output}", "--num_shards=3"])
    # A killed run's temporary object, and an object that is not this job's.
    (tmp_path / "x").write_bytes(b"partial")
    gcs_emulator.upload(tmp_path / "x", f"rerun/beam-temp-scores-{'0' * 32}/1234.scores.parquet")
    gcs_emulator.upload(tmp_path / "x", "rerun/notes.txt")
    before = gcs_emulator.list("rerun/")
    assert "rerun/scores-00002-of-00003.parquet" in before

    with pytest.raises(
        score.ScoreSetupError, match=r"already holds the output of an earlier run.*--overwrite"
    ):
        score.run([*common, f"--output={output}", "--num_shards=2"])
    assert gcs_emulator.list("rerun/") == before

    score.run([*common, f"--output={output}", "--num_shards=2", "--overwrite"])
    names = gcs_emulator.list("rerun/")
    assert names == [
        "rerun/notes.txt",
        "rerun/scores-00000-of-00002.parquet",
        "rerun/scores-00001-of-00002.parquet",
        "rerun/scores-errors-00000-of-00001.jsonl",
    ]
    (tmp_path / "shards").mkdir()
    for name in names[1:3]:
        gcs_emulator.download(name, tmp_path / "shards" / name.split("/")[-1])
    rows = read_parquet_rows(str(tmp_path / "shards" / "scores-*.parquet"))
    assert [r["id"] for r in rows] == sorted(scoring_inputs.ids)
