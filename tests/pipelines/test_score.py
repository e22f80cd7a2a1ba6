"""The scoring pipeline end to end on the DirectRunner: exact scores, nothing lost, clear errors up front."""

import base64
import dataclasses
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from scoring_data import (
    NUM_CLASSES,
    Corpus,
    bad_frame_records,
    decode_frame_record,
    good_frame_records,
    model_outputs,
    read_dead_letters,
    read_rows,
    save_tiny_model,
    score_args,
    video_record,
    write_corpus,
    write_tfrecords,
)

from nextvlad import records as records_lib
from pipelines import score, score_pipeline
from pipelines.handler import InvalidModelError

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """A tiny frame-level model and 20 videos (2-30 frames) in two files."""
    return write_corpus(tmp_path_factory.mktemp("score"), 20, seed=0, prefix="v", max_frames=25)


@pytest.fixture(scope="module")
def single_run(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("single") / "scores"
    # The model keeps 25 frames (its max_frames): the longer videos are truncated with no flag.
    summary = score.run(score_args(corpus, output, "--top_k=5", "--batch_size=8"))
    return summary, output


def _assert_same_rows(actual: list[dict], expected: list[dict]) -> None:
    assert [r["id"] for r in actual] == [r["id"] for r in expected]
    for a, e in zip(actual, expected, strict=True):
        for column in ("num_frames", "labels", "top_classes", "model_version"):
            assert a[column] == e[column], (a["id"], column)
        for column in ("top_scores", "embedding"):
            np.testing.assert_allclose(a[column], e[column], atol=TOLERANCE, err_msg=f"{a['id']} {column}")


# ------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------


def test_every_video_is_scored_exactly_as_model_predict_scores_it_alone(corpus, single_run):
    summary, output = single_run
    rows = read_rows(f"{output}-*-of-*.parquet")
    model = keras.saving.load_model(corpus.model_dir / "model.keras")
    assert [r["id"] for r in rows] == sorted(corpus.records)
    for row in rows:
        video = decode_frame_record(corpus.records[row["id"]], max_frames=25)
        expected = model_outputs(model, video)
        assert row["num_frames"] == video["num_frames"] == min(25, len(video["rgb"]))
        assert row["labels"] == video["labels"]
        # Top 5 by descending score, ties to the lower class id.
        order = sorted(range(NUM_CLASSES), key=lambda c: (-expected["predictions"][c], c))[:5]
        assert row["top_classes"] == order
        np.testing.assert_allclose(row["top_scores"], expected["predictions"][order], atol=TOLERANCE)
        np.testing.assert_allclose(row["embedding"], expected["embedding"], atol=TOLERANCE)
        assert row["model_version"].startswith("model@") and len(row["model_version"]) == len("model@") + 12


def test_summary_counts_every_record_and_batch(corpus, single_run):
    summary, output = single_run
    assert summary.records_read == summary.videos_scored == len(corpus.records) == 20
    assert summary.dead_letters == {}
    # Exactly --batch_size videos per inference call (the last one of each bundle may be short).
    assert math.ceil(20 / 8) <= summary.batches <= math.ceil(10 / 8) * 2
    line = summary.line()
    assert "Scored 20 videos of 20 records read; 0 dead letters" in line and "videos/s" in line
    assert read_dead_letters(str(output)) == []


def test_model_version_defaults_to_the_model_file_hash(corpus, single_run):
    import hashlib

    _, output = single_run
    digest = hashlib.sha256((corpus.model_dir / "model.keras").read_bytes()).hexdigest()[:12]
    assert {r["model_version"] for r in read_rows(f"{output}-*-of-*.parquet")} == {f"model@{digest}"}


def test_output_is_readable_with_duckdb_pandas_and_pyarrow(single_run):
    import duckdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, output = single_run
    pattern = f"{output}-*-of-*.parquet"
    files = sorted(Path(output).parent.glob("scores-*-of-*.parquet"))
    assert files and all(f.name.endswith(f"-of-{len(files):05d}.parquet") for f in files)

    # The output contract of docs/design.md, with the embedding as a fixed-size list.
    schema = pq.read_schema(files[0])
    assert {field.name: field.type for field in schema} == {
        "id": pa.string(),
        "num_frames": pa.int32(),
        "labels": pa.list_(pa.int32()),
        "top_classes": pa.list_(pa.int32()),
        "top_scores": pa.list_(pa.float32()),
        "embedding": pa.list_(pa.float32(), 16),
        "model_version": pa.string(),
    }
    count, dims, k = duckdb.sql(
        f"SELECT count(*), min(len(embedding)), max(len(top_classes)) FROM '{pattern}'"
    ).fetchone()
    assert (count, dims, k) == (20, 16, 5)
    frame = pd.concat([pd.read_parquet(f) for f in files])
    assert len(frame) == 20 and frame["embedding"].map(len).eq(16).all()


def test_multi_processing_gives_the_same_rows_as_one_process(corpus, single_run, tmp_path):
    _, single_output = single_run
    output = tmp_path / "scores"
    summary = score.run(
        score_args(
            corpus,
            output,
            "--top_k=5",
            "--batch_size=8",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        )
    )
    assert summary.videos_scored == 20
    _assert_same_rows(read_rows(f"{output}-*-of-*.parquet"), read_rows(f"{single_output}-*-of-*.parquet"))


# ------------------------------------------------------------------------------------------------
# Nothing lost
# ------------------------------------------------------------------------------------------------


def test_every_bad_record_and_corrupt_file_lands_in_the_dead_letter(corpus, tmp_path):
    rng = np.random.default_rng(1)
    good = good_frame_records(rng, 8, prefix="ok")
    bad = bad_frame_records(rng)
    # Ground truth from another vocabulary is not a bad record: that video is scored, labels kept.
    outside_id, outside_record = bad["label_out_of_range"]
    items = list(good.values())
    # Bad records between good ones, in two files; each file starts with a good record.
    mixed_a = [items[0], *[data for _, data in list(bad.values())[:5]], items[1], items[2]]
    mixed_b = [items[3], *[data for _, data in list(bad.values())[5:]], items[4]]
    data = tmp_path / "data"
    write_tfrecords(data / "a.tfrecord", mixed_a)
    write_tfrecords(data / "b.tfrecord", mixed_b)
    # A file cut in the middle of its third record: two records are readable, the rest is not.
    full = write_tfrecords(tmp_path / "full.tfrecord", items[5:8]).read_bytes()
    cut = 2 * 16 + len(items[5]) + len(items[6]) + 20
    (data / "c-truncated.tfrecord").write_bytes(full[:cut])

    output = tmp_path / "out" / "scores"
    summary = score.run(
        [
            f"--input={data}/*.tfrecord",
            f"--model={corpus.model_dir}",
            f"--output={output}",
            "--skip_corrupt_files",
            "--batch_size=4",
        ]
    )
    rows = read_rows(f"{output}-*-of-*.parquet")
    dead = read_dead_letters(str(output))

    assert sorted(r["id"] for r in rows) == sorted(
        ["ok000", "ok001", "ok002", "ok003", "ok004", "ok005", "ok006", outside_id]
    )
    outside_row = next(r for r in rows if r["id"] == outside_id)
    assert (
        outside_row["labels"] == records_lib.parse_frame_example(outside_record, num_classes=None)["labels"]
    )
    assert max(outside_row["labels"]) >= 7  # the tiny model has 7 classes
    assert summary.labels_outside_vocabulary == 1 and "labels outside the model's classes" in summary.line()
    del bad["label_out_of_range"]
    # The invariant: each record read is a row or a dead letter (the truncated tail counts as one).
    total_records = len(mixed_a) + len(mixed_b) + 3
    assert summary.records_read == total_records
    assert len(rows) + len(dead) == summary.records_read == summary.videos_scored + summary.num_dead_letters

    by_reason = {entry["reason"]: entry for entry in dead}
    assert sorted(by_reason) == sorted([*bad, "corrupt_file"])
    assert summary.dead_letters == {reason: 1 for reason in by_reason}
    for reason, (video_id, record) in bad.items():
        entry = by_reason[reason]
        assert entry["id"] == video_id, reason
        assert base64.b64decode(entry["record_base64"]) == record, reason
        assert entry["source_file"].endswith(("a.tfrecord", "b.tfrecord")), reason
        assert entry["message"]
    corrupt = by_reason["corrupt_file"]
    assert corrupt["source_file"].endswith("c-truncated.tfrecord")
    assert corrupt["byte_offset"] == 2 * 16 + len(items[5]) + len(items[6])
    assert corrupt["record_base64"] is None and "truncated" in corrupt["message"]


def test_a_record_failing_its_crc_is_dead_lettered_and_the_file_read_on(corpus, tmp_path):
    records = list(good_frame_records(np.random.default_rng(2), 3, prefix="crc").values())
    raw = bytearray(write_tfrecords(tmp_path / "clean.tfrecord", records).read_bytes())
    second = 16 + len(records[0])
    raw[second + 12 + 100] ^= 0xFF  # one flipped bit-pattern inside the second record's payload
    data = tmp_path / "data" / "flipped.tfrecord"
    data.parent.mkdir()
    data.write_bytes(bytes(raw))

    output = tmp_path / "out" / "scores"
    summary = score.run(
        [f"--input={data}", f"--model={corpus.model_dir}", f"--output={output}", "--skip_corrupt_files"]
    )
    assert [r["id"] for r in read_rows(f"{output}-*-of-*.parquet")] == ["crc000", "crc002"]
    [entry] = read_dead_letters(str(output))
    assert entry["reason"] == "corrupt_file" and entry["byte_offset"] == second
    assert "CRC" in entry["message"]
    assert base64.b64decode(entry["record_base64"]) == bytes(raw[second + 12 : second + 12 + len(records[1])])
    assert summary.records_read == 3


def test_a_truncated_file_fails_the_job_with_its_name(corpus, tmp_path):
    records = list(good_frame_records(np.random.default_rng(3), 2, prefix="t").values())
    full = write_tfrecords(tmp_path / "full.tfrecord", records).read_bytes()
    bad = tmp_path / "data" / "broken-shard.tfrecord"
    bad.parent.mkdir()
    bad.write_bytes(full[: len(full) - 7])
    with pytest.raises(Exception, match="broken-shard.tfrecord") as excinfo:
        score.run([f"--input={bad}", f"--model={corpus.model_dir}", f"--output={tmp_path / 'out' / 's'}"])
    assert "--skip_corrupt_files" in str(excinfo.value)


# ------------------------------------------------------------------------------------------------
# Other inputs and options
# ------------------------------------------------------------------------------------------------


def test_video_level_records_are_scored_with_a_video_level_model(tmp_path):
    model_path = save_tiny_model(tmp_path / "video-model.keras", input_format="video")
    rng = np.random.default_rng(4)
    videos = {
        f"vid{i}": (
            sorted(rng.choice(NUM_CLASSES, 2, replace=False).tolist()),
            rng.normal(size=1024),
            rng.normal(size=128),
        )
        for i in range(6)
    }
    write_tfrecords(tmp_path / "data" / "video.tfrecord", [video_record(k, *v) for k, v in videos.items()])
    output = tmp_path / "out" / "scores"
    # No --input_format: it follows the model.
    summary = score.run(
        [f"--input={tmp_path}/data/*.tfrecord", f"--model={model_path}", f"--output={output}", "--top_k=3"]
    )
    assert summary.videos_scored == 6
    model = keras.saving.load_model(model_path)
    for row in read_rows(f"{output}-*-of-*.parquet"):
        labels, mean_rgb, mean_audio = videos[row["id"]]
        expected = model_outputs(
            model, {"mean_rgb": mean_rgb.astype(np.float32), "mean_audio": mean_audio.astype(np.float32)}
        )
        assert row["num_frames"] == 0  # video-level input: no frame count
        assert row["labels"] == labels
        np.testing.assert_allclose(row["embedding"], expected["embedding"], atol=TOLERANCE)
        np.testing.assert_allclose(
            row["top_scores"], np.sort(expected["predictions"])[::-1][:3], atol=TOLERANCE
        )


def test_reverse_whitening_sharding_reshuffling_and_a_shared_model(corpus, tmp_path):
    # A model trained with reverse whitening stores its scale: scoring needs no flag to reproduce it.
    eigenvals = np.linspace(0.5, 4.0, 2048, dtype=np.float32)
    scale = (np.sqrt(eigenvals[:1024].astype(np.float64)) + 1e-4).astype(np.float32)
    model_dir = tmp_path / "whitened"
    save_tiny_model(model_dir / "model.keras", rgb_scale=scale, max_frames=25)
    output = tmp_path / "out" / "scores"
    args = [
        "--runner=DirectRunner",
        f"--input={corpus.pattern}",
        f"--model={model_dir}",
        f"--output={output}",
        "--num_shards=2",
        "--share_model",
        "--reshuffle",
        "--model_version=v7",
    ]
    summary = score.run(args)
    assert summary.videos_scored == 20
    assert sorted(p.name for p in output.parent.glob("scores-*.parquet")) == [
        "scores-00000-of-00002.parquet",
        "scores-00001-of-00002.parquet",
    ]
    model = keras.saving.load_model(model_dir / "model.keras")
    plain = keras.saving.load_model(corpus.model_dir / "model.keras")  # the same weights, no whitening
    moved = 0.0
    for row in read_rows(f"{output}-*-of-*.parquet"):
        video = decode_frame_record(corpus.records[row["id"]], max_frames=25)
        expected = model_outputs(model, video)
        np.testing.assert_allclose(row["embedding"], expected["embedding"], atol=TOLERANCE)
        moved = max(
            moved, float(np.abs(expected["embedding"] - model_outputs(plain, video)["embedding"]).max())
        )
        assert row["model_version"] == "v7"
    assert moved > 1e-3  # the whitening inside the model does change the scores

    with pytest.raises(score.ScoreSetupError, match="--pca_eigenvals is no longer a scoring flag"):
        score.run([*args, f"--pca_eigenvals={tmp_path / 'eigenvals.npy'}", "--overwrite"])


def _make_demo(corpus: Corpus, root: Path) -> Path:
    demo = root / ".demo"
    (demo / "model").mkdir(parents=True)
    (demo / "model" / "model.keras").write_bytes((corpus.model_dir / "model.keras").read_bytes())
    items = list(corpus.records.values())[:5]
    write_tfrecords(demo / "data" / "demo-00000-of-00001.tfrecord", items)
    return demo


def test_the_cli_prints_the_summary_line(corpus, tmp_path, capsys):
    assert score.main(score_args(corpus, tmp_path / "scores", "--top_k=3")) == 0
    assert "Scored 20 videos of 20 records read; 0 dead letters" in capsys.readouterr().out


@pytest.mark.parametrize("missing", ["input", "model", "output"])
def test_input_model_and_output_are_all_required(corpus, tmp_path, monkeypatch, capsys, missing):
    # No default model or corpus to fall back to, even where a demo folder exists.
    _make_demo(corpus, tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [a for a in score_args(corpus, tmp_path / "out" / "scores") if not a.startswith(f"--{missing}=")]
    assert score.main(args) == 2
    err = capsys.readouterr().err
    assert f"--{missing} is required" in err and "--input 'PATTERN.tfrecord' --model MODEL_DIR" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# Re-running into the same --output
# ------------------------------------------------------------------------------------------------


def test_an_earlier_run_at_the_output_is_refused_until_overwrite_replaces_it(corpus, tmp_path):
    out = tmp_path / "out"
    output = out / "scores"
    score.run(score_args(corpus, output, "--num_shards=3"))
    earlier_segments = out / "scores_segments-00000-of-00001.parquet"  # an earlier run's segment rows
    earlier_segments.write_bytes(b"PAR1")
    unrelated = [out / "notes.txt", out / "other-00000-of-00001.parquet"]
    for path in unrelated:
        path.write_text("not this job's")
    before = sorted(p.name for p in out.iterdir())

    # A different shard count would leave the three old shards beside the two new ones.
    with pytest.raises(
        score.ScoreSetupError,
        match=r"already holds the output of an earlier run \(5 files: .*scores-00000-of-00003\.parquet"
        r".*Pass --overwrite",
    ):
        score.run(score_args(corpus, output, "--num_shards=2"))
    # A dry run with --overwrite checks and deletes nothing.
    score.run(score_args(corpus, output, "--num_shards=2", "--overwrite", "--dry_run"))
    assert sorted(p.name for p in out.iterdir()) == before

    summary = score.run(score_args(corpus, output, "--num_shards=2", "--overwrite"))
    assert summary.videos_scored == 20
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt",
        "other-00000-of-00001.parquet",
        "scores-00000-of-00002.parquet",
        "scores-00001-of-00002.parquet",
        "scores-errors-00000-of-00001.jsonl",
    ]
    # What a reader's glob sees: every video once.
    assert [r["id"] for r in read_rows(f"{output}-*.parquet")] == sorted(corpus.records)
    assert read_dead_letters(str(output)) == []


def test_with_no_arguments_the_cli_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert score.main([]) == 2
    err = capsys.readouterr().err
    assert "--input, --model, --output are required" in err and "make demo" in err


# ------------------------------------------------------------------------------------------------
# Clear errors before anything runs
# ------------------------------------------------------------------------------------------------


def test_missing_model_is_reported_before_the_job_starts(corpus, tmp_path):
    with pytest.raises(InvalidModelError, match=r"No model at .*nowhere.*model\.keras"):
        score.run(score_args(dataclasses.replace(corpus, model_dir=tmp_path / "nowhere"), tmp_path / "o"))
    with pytest.raises(InvalidModelError, match="does not exist"):
        score.run(
            score_args(dataclasses.replace(corpus, model_dir=tmp_path / "missing.keras"), tmp_path / "o")
        )


def test_a_model_that_is_not_nextvlad_is_rejected(corpus, tmp_path):
    inputs = keras.Input((4,), name="x")
    keras.Model(inputs, keras.layers.Dense(2, name="y")(inputs)).save(tmp_path / "other.keras")
    with pytest.raises(InvalidModelError, match="not a NeXtVLAD serving model.*predictions"):
        score.run(score_args(dataclasses.replace(corpus, model_dir=tmp_path / "other.keras"), tmp_path / "o"))
    (tmp_path / "junk.keras").write_text("not a model")
    with pytest.raises(InvalidModelError, match="Could not load .*junk.keras"):
        score.run(score_args(dataclasses.replace(corpus, model_dir=tmp_path / "junk.keras"), tmp_path / "o"))


def test_top_k_larger_than_the_class_count_is_rejected(corpus, tmp_path):
    with pytest.raises(
        score.ScoreSetupError, match=f"--top_k=8 is larger than the model's {NUM_CLASSES} classes"
    ):
        score.run(score_args(corpus, tmp_path / "o", "--top_k=8"))


def test_an_input_pattern_matching_nothing_is_rejected(corpus, tmp_path):
    with pytest.raises(score.ScoreSetupError, match=r"--input .*nothing-here.*matches no files"):
        score.run(
            score_args(
                dataclasses.replace(corpus, pattern=str(tmp_path / "nothing-here*.tfrecord")), tmp_path / "o"
            )
        )


def test_an_unwritable_output_is_rejected(corpus, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a regular file cannot hold a directory
    with pytest.raises(
        score.ScoreSetupError, match="Cannot write to the output location .*a-file/sub/scores"
    ):
        score.run(score_args(corpus, blocker / "sub" / "scores"))
    assert not list(tmp_path.rglob("*.parquet"))


def test_input_format_disagreeing_with_the_model_or_the_data_is_rejected(corpus, tmp_path):
    with pytest.raises(
        score.ScoreSetupError, match="--input_format=video but the model .* takes frame-level"
    ):
        score.run(score_args(corpus, tmp_path / "o", "--input_format=video"))
    rng = np.random.default_rng(5)
    write_tfrecords(
        tmp_path / "video" / "v.tfrecord",
        [video_record("x", [1], rng.normal(size=1024), rng.normal(size=128))],
    )
    with pytest.raises(score.ScoreSetupError, match="holds video-level records but the model .* frame-level"):
        score.run(
            score_args(
                dataclasses.replace(corpus, pattern=str(tmp_path / "video" / "*.tfrecord")), tmp_path / "o"
            )
        )


def test_bigquery_output_needs_a_table(corpus, tmp_path):
    with pytest.raises(score.ScoreSetupError, match="needs --bigquery_table"):
        score.run(score_args(corpus, tmp_path / "o", "--output_format", "bigquery"))


def test_the_job_is_built_from_small_named_transforms(corpus, tmp_path):
    import apache_beam as beam

    from pipelines.handler import inspect_model

    # Building (not running) the graph; a DataflowRunner pipeline would need the network for its bucket.
    args, _ = score.parse_known_args(score_args(corpus, tmp_path / "scores", "--top_k=5", "--reshuffle"))
    args.input_format = "frame"
    pipeline = beam.Pipeline()
    score_pipeline.build_pipeline(pipeline, args, inspect_model(str(corpus.model_dir)), model_version="v1")
    labels = [part.full_label for part in pipeline.transforms_stack[0].parts]
    assert labels == [
        "ReadFrameRecords",
        "ReshuffleRecords",
        "ParseRecords",
        "BucketByLength",
        "RunInference",
        "FormatRows",
        "WriteParquet",
        "CollectDeadLetters",
        "WriteDeadLetter",
    ]


def test_dataflow_flags_pass_through_to_beam():
    known, beam_args = score.parse_known_args(
        ["--input=x", "--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/t", "--top_k=3"]
    )
    assert (known.input, known.top_k) == ("x", 3)
    assert beam_args == ["--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/t"]


@pytest.mark.parametrize("input_format", ["frame", "video"])
def test_records_of_the_2017_layout_are_scored_under_their_video_id(tmp_path, caplog, input_format):
    """The 2017 release names the id feature `video_id`: same rows as the 2018 layout, and the log says
    which layout it found."""
    import logging

    import tensorflow as tf

    model_path = save_tiny_model(tmp_path / "model.keras", input_format=input_format)
    rng = np.random.default_rng(8)
    if input_format == "frame":
        records_2018 = list(good_frame_records(rng, 5, prefix="old").values())
    else:
        records_2018 = [
            video_record(f"old{i}", [1], rng.normal(size=1024), rng.normal(size=128)) for i in range(5)
        ]
    # The same records with the id feature renamed, built with plain protos.
    kind = tf.train.SequenceExample if input_format == "frame" else tf.train.Example
    records_2017 = []
    for data in records_2018:
        proto = kind.FromString(data)
        features = (proto.context if input_format == "frame" else proto.features).feature
        features["video_id"].CopyFrom(features["id"])
        del features["id"]
        records_2017.append(proto.SerializeToString())
    rows = {}
    for layout, items in (("2018", records_2018), ("2017", records_2017)):
        write_tfrecords(tmp_path / layout / "part.tfrecord", items)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pipelines.score_arguments"):
            summary = score.run(
                [
                    f"--input={tmp_path / layout}/*.tfrecord",
                    f"--model={model_path}",
                    f"--output={tmp_path / layout / 'scores'}",
                ]
            )
        assert summary.videos_scored == 5 and summary.dead_letters == {}
        expected_log = "2017 layout (id in 'video_id')" if layout == "2017" else "2018+ layout (id in 'id')"
        assert expected_log in caplog.text
        rows[layout] = read_rows(f"{tmp_path / layout / 'scores'}-*.parquet")
    assert [r["id"] for r in rows["2017"]] == [
        f"old{i:03d}" if input_format == "frame" else f"old{i}" for i in range(5)
    ]
    _assert_same_rows(rows["2017"], rows["2018"])
