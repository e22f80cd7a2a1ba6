"""`pipelines.score --segments`: every 5-frame segment scored beside its video, exactly, and clear errors."""

from pathlib import Path

import keras
import numpy as np
import pytest
from scoring_data import (
    NUM_CLASSES,
    Corpus,
    decode_frame_record,
    model_outputs,
    read_rows,
    save_tiny_model,
    score_args,
    write_corpus,
    write_tfrecords,
)

from pipelines import score, segment_submission
from pipelines.bigquery import (
    SEGMENTS_SCHEMA_FILE,
    bigquery_schema,
    load_schema_file,
    segments_table,
    to_bigquery_row,
)

TOLERANCE = 1e-5
MAX_FRAMES = 25  # the tiny model's own frame limit


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """A tiny frame-level model and 12 videos (2-30 frames) in two files."""
    return write_corpus(tmp_path_factory.mktemp("segments"), 12, seed=1, prefix="s", max_frames=MAX_FRAMES)


@pytest.fixture(scope="module")
def segment_run(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("run") / "scores"
    summary = score.run(
        score_args(
            corpus,
            output,
            "--top_k=3",
            "--batch_size=4",
            "--segments",
            "--segment_embeddings",
            "--segment_batch_size=8",
        )
    )
    return summary, output


def _expected_segments(corpus: Corpus, length: int = 5) -> dict[tuple[str, int], dict]:
    """Each (id, start) window of `length` frames among the frames the model reads, with the model's
    outputs on that window alone (a batch of one, no padding)."""
    model = keras.saving.load_model(corpus.model_dir / "model.keras")
    expected = {}
    for data in corpus.records.values():
        video = decode_frame_record(data, max_frames=MAX_FRAMES)
        for start in range(0, video["num_frames"], length):
            window = {
                "rgb": video["rgb"][start : start + length],
                "audio": video["audio"][start : start + length],
                "num_frames": min(length, video["num_frames"] - start),
            }
            expected[(video["id"], start)] = model_outputs(model, window)
    return expected


def test_every_segment_is_scored_exactly_as_the_model_scores_it_alone(corpus, segment_run):
    summary, output = segment_run
    expected = _expected_segments(corpus)
    rows = read_rows(f"{output}_segments-*.parquet")
    assert sorted((r["id"], r["start_time"]) for r in rows) == sorted(expected)
    for row in rows:
        want = expected[(row["id"], row["start_time"])]
        order = np.argsort(-want["predictions"], kind="stable")[:3]
        assert row["top_classes"] == order.tolist(), (row["id"], row["start_time"])
        np.testing.assert_allclose(row["top_scores"], want["predictions"][order], atol=TOLERANCE)
        np.testing.assert_allclose(row["embedding"], want["embedding"], atol=TOLERANCE)
    assert summary.segments_scored == len(expected)
    line = summary.line()
    assert f"{len(expected)} segments ({len(expected) / 12:.1f} per video)" in line
    assert "ms of model time per video" in line


def test_video_rows_are_unchanged_and_never_mixed_with_segment_rows(corpus, segment_run):
    _, output = segment_run
    videos = read_rows(f"{output}-*.parquet")  # the video readers' glob
    assert sorted(r["id"] for r in videos) == sorted(corpus.records)
    assert all("start_time" not in r for r in videos)
    model = keras.saving.load_model(corpus.model_dir / "model.keras")
    for row in videos:
        want = model_outputs(model, decode_frame_record(corpus.records[row["id"]], max_frames=MAX_FRAMES))
        np.testing.assert_allclose(row["embedding"], want["embedding"], atol=TOLERANCE)


def test_segment_classes_restrict_each_segments_top_classes(corpus, tmp_path):
    classes = tmp_path / "rated.csv"
    classes.write_text("Index\n1\n4\n6\n")
    output = tmp_path / "scores"
    score.run(
        score_args(
            corpus,
            output,
            "--top_k=3",
            "--segments",
            "--segment_classes",
            str(classes),
            "--segment_top_k=2",
            "--segment_length=10",
            "--segment_stride=10",
        )
    )
    expected = {key: out["predictions"] for key, out in _expected_segments(corpus, 10).items()}
    rows = read_rows(f"{output}_segments-*.parquet")
    assert sorted((r["id"], r["start_time"]) for r in rows) == sorted(expected)
    for row in rows:
        predictions = expected[(row["id"], row["start_time"])]
        rated = np.array([1, 4, 6])
        best = rated[np.argsort(-predictions[rated], kind="stable")[:2]]
        assert row["top_classes"] == best.tolist()
        assert "embedding" not in row  # only with --segment_embeddings


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--segment_top_k=2"], "--segment_top_k set without --segments"),
        (["--segments", "--segment_stride=0"], "--segment_stride=0 must be >= 1"),
        (["--segments", "--segment_top_k=99"], f"--segment_top_k=99 is more than the {NUM_CLASSES} classes"),
    ],
)
def test_bad_segment_arguments_are_refused_up_front(corpus, tmp_path, extra, message):
    with pytest.raises(score.ScoreSetupError, match=message):
        score.run(score_args(corpus, tmp_path / "out", *extra))
    assert not list(tmp_path.glob("out*"))


def test_segment_classes_outside_the_model_are_refused(corpus, tmp_path):
    classes = tmp_path / "rated.csv"
    classes.write_text("Index\n2\n3862\n")
    with pytest.raises(score.ScoreSetupError, match=r"names classes \[3862\] outside the model's 7"):
        score.run(score_args(corpus, tmp_path / "out", "--segments", "--segment_classes", str(classes)))


def test_segments_need_a_frame_level_model(tmp_path):
    save_tiny_model(tmp_path / "video" / "model.keras", input_format="video")
    write_tfrecords(tmp_path / "data.tfrecord", [])
    with pytest.raises(score.ScoreSetupError, match="--segments needs a frame-level model"):
        score.run(
            [
                "--runner=DirectRunner",
                f"--input={tmp_path / 'data.tfrecord'}",
                f"--model={tmp_path / 'video'}",
                f"--output={tmp_path / 'out'}",
                "--segments",
            ]
        )


def test_segment_rows_for_bigquery():
    assert load_schema_file(SEGMENTS_SCHEMA_FILE) == bigquery_schema(segments=True)
    names = [f["name"] for f in bigquery_schema(segments=True)["fields"]]
    assert names == ["id", "start_time", "top_classes", "top_scores", "embedding"]
    assert segments_table("my-project:video_scores.nextvlad") == "my-project:video_scores.nextvlad_segments"
    row = {
        "id": "v1",
        "start_time": np.int32(15),
        "top_classes": np.array([3, 1], np.int32),
        "top_scores": np.array([0.75, 0.25], np.float32),
    }
    assert to_bigquery_row(row, segments=True) == {
        "id": "v1",
        "start_time": 15,
        "top_classes": [3, 1],
        "top_scores": [0.75, 0.25],
        "embedding": [],
    }


# ------------------------------------------------------------------------------------------------
# The 2019 submission file
# ------------------------------------------------------------------------------------------------


def _write_segment_rows(path: Path, rows: list[tuple[str, int, list[int], list[float]]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.string()),
            "start_time": pa.array([r[1] for r in rows], pa.int32()),
            "top_classes": pa.array([r[2] for r in rows], pa.list_(pa.int32())),
            "top_scores": pa.array([r[3] for r in rows], pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, path, row_group_size=2)


def test_submission_lists_each_classes_best_segments_by_hand(tmp_path):
    _write_segment_rows(
        tmp_path / "run_segments-00000-of-00002.parquet",
        [("a", 0, [3, 1], [0.9, 0.1]), ("a", 5, [1, 3], [0.8, 0.5]), ("b", 0, [3, 2], [0.5, 0.4])],
    )
    _write_segment_rows(
        tmp_path / "run_segments-00001-of-00002.parquet",
        [("c", 10, [2, 3], [0.7, 0.95]), ("c", 15, [1, 2], [0.6, 0.3])],
    )
    (tmp_path / "rated.csv").write_text("Index\n1\n3\n4\n")
    output = tmp_path / "submission.csv"
    code = segment_submission.main(
        ["--segments", str(tmp_path / "run_segments-*.parquet"), "--output", str(output),
         "--segment_classes", str(tmp_path / "rated.csv"), "--max_segments", "3"]
    )  # fmt: skip
    assert code == 0
    # Class 3: c:10 0.95, a:0 0.9, then a:5 and b:0 tie at 0.5 (file and row order: a:5 first), cut at 3.
    # Class 1: a:5 0.8, c:15 0.6, a:0 0.1. Class 4: rated, never predicted. Class 2: not rated.
    assert output.read_text() == "Class,Segments\n1,a:5 c:15 a:0\n3,c:10 a:0 a:5\n4,\n"


def test_submission_from_a_scoring_run_ranks_the_segment_rows(corpus, segment_run, tmp_path):
    _, output = segment_run
    submission = tmp_path / "submission.csv"
    assert (
        segment_submission.main(["--segments", f"{output}_segments-*.parquet", "--output", str(submission)])
        == 0
    )
    rows = read_rows(f"{output}_segments-*.parquet")
    lines = submission.read_text().splitlines()
    assert lines[0] == "Class,Segments"
    listed = {int(line.split(",")[0]): line.split(",")[1].split() for line in lines[1:]}
    for class_id, keys in listed.items():
        scored = {
            f"{r['id']}:{r['start_time']}": r["top_scores"][r["top_classes"].index(class_id)]
            for r in rows
            if class_id in r["top_classes"]
        }
        assert sorted(keys) == sorted(scored)  # fewer than 100,000: every candidate is listed
        assert [scored[k] for k in keys] == sorted(scored.values(), reverse=True)


def test_submission_errors_name_the_problem(tmp_path, capsys):
    assert segment_submission.main(["--segments", str(tmp_path / "none-*.parquet"), "--output", "x.csv"]) == 2
    assert "matches no files" in capsys.readouterr().err
    _write_segment_rows(tmp_path / "ok.parquet", [("a", 0, [1], [0.5])])
    assert segment_submission.main(["--segments", str(tmp_path / "ok.parquet"), "--output", "x.csv",
                                    "--max_segments", "0"]) == 2  # fmt: skip
    assert "--max_segments=0 must be >= 1" in capsys.readouterr().err
