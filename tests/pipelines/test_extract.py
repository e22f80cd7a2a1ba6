"""`python -m pipelines.extract` end to end on clips made here: records, dead letters, labels, PCA fitting.

The backbone is a tiny Keras model whose first 16 features are the brightness of a 4 x 4 block grid, and
the PCA an identity, so a record's rgb bytes show which source frame each second came from.
"""

import json
import shutil

import numpy as np
import pytest
from extraction_helpers import block_codes, identity_pca, tiny_backbone, write_audio_only

from nextvlad.extraction.clips import write_clip
from nextvlad.records import iter_tfrecords, parse_frame_example
from pipelines import extract


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    return {"backbone": str(tiny_backbone(folder / "tiny.keras")), "pca": str(identity_pca(folder / "pca"))}


def _good_videos(folder):
    write_clip(str(folder / "tone.mp4"), duration=7.5, fps=2, tone_hz=440)  # 8 frames, audio
    write_clip(str(folder / "quiet.webm"), duration=3.0, fps=2)  # 3 frames, no audio
    write_clip(str(folder / "blink.mp4"), duration=0.4, fps=5)  # 1 frame
    write_clip(str(folder / "vfr.mp4"), frame_times=[0.0, 0.3, 1.6, 2.5], fps=4)  # ends at 2.75: 3 frames
    return {"tone": list(range(8)), "quiet": [0, 1, 2], "blink": [0], "vfr": [0, 0, 1]}


def _bad_videos(folder):
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("meeting notes, not a video\n" * 20)
    write_clip(str(folder / "whole.mp4"), duration=4.0, fps=2)
    data = (folder / "whole.mp4").read_bytes()
    (folder / "whole.mp4").unlink()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    write_audio_only(folder / "voice.mp4")
    write_clip(str(folder / "tone.webm"), duration=1.0, fps=2)  # same stem as tone.mp4: a duplicate id
    return {
        "empty": "empty_file",
        "notes": "not_a_video",
        "cut": "truncated",
        "voice": "no_video_stream",
        "tone": "duplicate_id",
    }


def _records(output):
    out = {}
    for path in sorted(output.parent.glob(output.name + "-*-of-*.tfrecord")):
        for record in iter_tfrecords(str(path)):
            example = parse_frame_example(record, num_classes=None)
            out[example["id"]] = example
    return out


def _dead_letters(output):
    lines = []
    for path in output.parent.glob(output.name + "-errors-*.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


def _args(pattern, output, assets, *extra, pca=True):
    """`pipelines.extract` arguments with the test backbone (and the identity PCA unless pca=False)."""
    args = [f"--input={pattern}", f"--output={output}", f"--backbone={assets['backbone']}"]
    return [*args, f"--pca_dir={assets['pca']}", *extra] if pca else [*args, *extra]


@pytest.fixture(scope="module")
def mixed_run(assets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    videos = folder / "videos"
    videos.mkdir()
    expected = _good_videos(videos)
    reasons = _bad_videos(videos)
    labels = folder / "labels.csv"
    labels.write_text("path_or_stem,label_ids,id\ntone.mp4,3 7,\nquiet,5,quiet-video\n")
    output = folder / "out" / "part"
    summary = extract.run(_args(f"{videos}/*", output, assets, f"--labels={labels}", "--num_shards=2"))
    return {"summary": summary, "output": output, "expected": expected, "reasons": reasons, "videos": videos}


def test_each_second_comes_from_the_frame_shown_then(mixed_run):
    records = _records(mixed_run["output"])
    expected = dict(mixed_run["expected"])
    expected["quiet-video"] = expected.pop("quiet")  # the labels CSV renames it
    assert set(records) == set(expected)
    for video_id, codes in expected.items():
        example = records[video_id]
        assert example["num_frames"] == len(codes), video_id
        assert block_codes(example["rgb"]) == codes, video_id
        assert example["rgb"].shape == (len(codes), 1024) and example["audio"].shape == (len(codes), 128)
        np.testing.assert_array_equal(
            example["audio"], 0
        )  # no VGGish given: zeros, as the dataset's extractor


def test_labels_and_ids_come_from_the_csv_or_the_file_stem(mixed_run):
    records = _records(mixed_run["output"])
    assert records["tone"]["labels"] == [3, 7]
    assert records["quiet-video"]["labels"] == [5]
    assert records["blink"]["labels"] == []


def test_every_bad_input_is_a_dead_letter_with_its_reason_and_nothing_is_lost(mixed_run):
    letters = _dead_letters(mixed_run["output"])
    by_stem = {letter["source_file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]: letter for letter in letters}
    assert {stem: letter["reason"] for stem, letter in by_stem.items()} == mixed_run["reasons"]
    assert by_stem["tone"]["source_file"].endswith("tone.webm")  # tone.mp4 sorts first and keeps the id
    assert "already taken by" in by_stem["tone"]["message"]
    summary = mixed_run["summary"]
    files = len(list(mixed_run["videos"].iterdir()))
    assert summary.files_matched == files
    assert summary.videos_extracted + summary.num_dead_letters == files
    assert summary.videos_extracted == len(_records(mixed_run["output"])) == 4
    assert summary.frames == 15 and summary.without_audio == 3
    assert summary.dead_letters == {reason: 1 for reason in mixed_run["reasons"].values()}
    line = summary.line()
    assert "Extracted 4 of 9 videos (15 frames" in line and "truncated 1" in line


def test_metadata_records_the_backbone_pca_and_audio(mixed_run, assets):
    metadata = json.loads((mixed_run["output"].parent / "part-metadata.json").read_text())
    assert metadata["backbone"] == assets["backbone"]
    assert metadata["pca_dir"] == assets["pca"]
    assert metadata["audio"].startswith("zeros")
    assert metadata["videos_extracted"] == 4 and metadata["feature_dim"] == 2048


def _one_clip(tmp_path, assets, name):
    """A folder with one 2 s clip, and the arguments that extract it with the test backbone."""
    videos = tmp_path / "v"
    videos.mkdir()
    write_clip(str(videos / name), duration=2.0, fps=2)
    output = tmp_path / "out" / "part"
    args = _args(f"{videos}/*", output, assets)
    return videos, output, args


def test_an_earlier_run_is_refused_until_overwrite(assets, tmp_path):
    videos, output, args = _one_clip(tmp_path, assets, "one.mp4")
    extract.run(args)
    with pytest.raises(extract.ExtractSetupError, match="--overwrite"):
        extract.run(args)
    write_clip(str(videos / "two.mp4"), duration=2.0, fps=2)
    summary = extract.run([*args, "--overwrite", "--num_shards=1"])
    assert summary.videos_extracted == 2
    assert len(list(output.parent.glob("part-*-of-*.tfrecord"))) == 1 and set(_records(output)) == {
        "one",
        "two",
    }


def test_fit_pca_then_pca_dir_reproduce_the_same_features(assets, tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(4):
        write_clip(str(videos / f"clip{i}.mp4"), duration=3.0 + i, fps=2)
    fitted = tmp_path / "fit" / "part"
    summary = extract.run(_args(f"{videos}/*", fitted, assets, "--fit_pca=1000", pca=False))
    assert summary.videos_extracted == 4
    pca_dir = fitted.parent / "part-pca"
    eigenvals = np.load(pca_dir / "eigenvals.npy").reshape(-1)
    assert np.load(pca_dir / "eigenvecs.npy").shape == (1024, 2048)
    # Reference: the covariance of every frame's features (all 3+4+5+6 = 18 frames: 250 per video allowed).
    from nextvlad.extraction.backbone import Backbone, BackboneSpec
    from nextvlad.extraction.decode import decode_video

    backbone = Backbone(BackboneSpec(name=assets["backbone"]))
    features = np.concatenate(
        [
            backbone.features(decode_video(str(p), image_size=(32, 32)).frames)
            for p in sorted(videos.iterdir())
        ]
    ).astype(np.float64)
    assert features.shape[0] == 18
    reference = np.sort(np.linalg.eigvalsh(np.cov(features.T, bias=True)))[::-1]
    np.testing.assert_allclose(eigenvals[:8], reference[:8], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(np.load(pca_dir / "mean.npy").reshape(-1), features.mean(0), atol=1e-5)

    again = tmp_path / "again" / "part"
    extract.run(_args(f"{videos}/*", again, assets, f"--pca_dir={pca_dir}", pca=False))
    first, second = _records(fitted), _records(again)
    assert set(first) == set(second) == {f"clip{i}" for i in range(4)}
    for video_id in first:
        np.testing.assert_array_equal(first[video_id]["rgb"], second[video_id]["rgb"])


def test_setup_errors_name_the_value_and_the_fix(assets, tmp_path, capsys):
    videos = tmp_path / "v"
    videos.mkdir()
    write_clip(str(videos / "one.mp4"), duration=1.0, fps=2)
    base = [f"--input={videos}/*", f"--output={tmp_path / 'o' / 'p'}", f"--backbone={assets['backbone']}"]
    with pytest.raises(SystemExit):
        extract.parse_known_args(base)  # neither --pca_dir nor --fit_pca
    assert "--pca_dir" in capsys.readouterr().err
    cases = [
        ([f"--pca_dir={assets['pca']}", f"--vggish_checkpoint={tmp_path}/x.ckpt"], "go together"),
        ([f"--pca_dir={tmp_path}"], "cannot read"),
        ([f"--pca_dir={assets['pca']}", "--max_frames=0"], "--max_frames=0 must be >= 1"),
    ]
    for extra, message in cases:
        with pytest.raises(extract.ExtractSetupError, match=message):
            extract.run([*base, *extra])
    with pytest.raises(extract.ExtractSetupError, match="matches no files"):
        extract.run([f"--input={tmp_path}/none/*.mp4", *base[1:], f"--pca_dir={assets['pca']}"])
    labels = tmp_path / "labels.csv"
    labels.write_text("video,labels\na,1\n")
    with pytest.raises(extract.ExtractSetupError, match="header 'path_or_stem,label_ids'"):
        extract.run([*base, f"--pca_dir={assets['pca']}", f"--labels={labels}"])
    labels.write_text("path_or_stem,label_ids\na,cat\n")
    with pytest.raises(extract.ExtractSetupError, match="line 2: label_ids 'cat'"):
        extract.run([*base, f"--pca_dir={assets['pca']}", f"--labels={labels}"])


def test_the_cli_prints_the_summary_and_exits_2_on_setup_errors(assets, tmp_path, capsys):
    _, output, args = _one_clip(tmp_path, assets, "one.webm")
    assert extract.main(args) == 0
    assert "Extracted 1 of 1 videos (2 frames" in capsys.readouterr().out
    assert extract.main(args) == 2
    assert "error: --output" in capsys.readouterr().err
    shutil.rmtree(output.parent)


def test_own_videos_end_to_end_extract_train_score(assets, tmp_path):
    """40 generated clips whose colour depends on their label → extract → train (demo preset) → score:
    every clip gets a row, and the model trained on the extracted features beats chance."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from nextvlad.extraction.clips import class_picture

    classes, videos = 4, tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path_or_stem,label_ids"]
    for i in range(40):
        label = i % classes
        seconds = int(rng.integers(3, 7))
        write_clip(
            str(videos / f"v{i:02d}.mp4"), duration=seconds, fps=2, picture=class_picture(label, classes)
        )
        rows.append(f"v{i:02d},{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    features = tmp_path / "features" / "part"
    summary = extract.run(_args(f"{videos}/*.mp4", features, assets, f"--labels={tmp_path / 'labels.csv'}"))
    assert summary.videos_extracted == 40 and summary.num_dead_letters == 0

    model_dir = tmp_path / "model"
    train = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--preset=demo", f"--num_classes={classes}"]
        + [f"--train_data={features}-*.tfrecord", f"--model_dir={model_dir}", "--epochs=8", "--batch_size=8"]
        + ["--learning_rate=0.01", "--seed=0", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    score = subprocess.run(
        [sys.executable, "-m", "pipelines.score", "--runner=DirectRunner", f"--input={features}-*.tfrecord"]
        + [f"--model={model_dir}", f"--output={tmp_path / 'scores' / 's'}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert score.returncode == 0, score.stderr[-3000:]
    table = pq.read_table(sorted(str(p) for p in (tmp_path / "scores").glob("s-*.parquet")))
    assert sorted(table.column("id").to_pylist()) == [f"v{i:02d}" for i in range(40)]
    hits = [
        top[0] in labels
        for top, labels in zip(
            table.column("top_classes").to_pylist(), table.column("labels").to_pylist(), strict=True
        )
    ]
    assert np.mean(hits) > 2 / classes  # chance is 1/4


def test_with_vggish_audio_features_come_from_the_soundtrack(assets, tmp_path):
    from extraction_helpers import write_vggish_checkpoint

    write_vggish_checkpoint(tmp_path / "vggish_model.ckpt")
    rng = np.random.default_rng(4)
    np.savez(
        tmp_path / "vggish_pca_params.npz",
        pca_eigen_vectors=(rng.standard_normal((128, 128)) * 0.5).astype(np.float32),
        pca_means=np.zeros((128, 1), np.float32),
    )
    videos = tmp_path / "v"
    videos.mkdir()
    write_clip(str(videos / "tone.mp4"), duration=5.0, fps=2, tone_hz=500)  # 500 whole cycles a second
    write_clip(str(videos / "quiet.webm"), duration=3.0, fps=2)
    output = tmp_path / "o" / "part"
    summary = extract.run(
        _args(f"{videos}/*", output, assets)
        + [
            f"--vggish_checkpoint={tmp_path / 'vggish_model.ckpt'}",
            f"--vggish_pca={tmp_path / 'vggish_pca_params.npz'}",
            "--share_model",  # one copy of both networks per machine, called through a proxy
        ]
    )
    assert summary.videos_extracted == 2 and summary.without_audio == 1
    records = _records(output)
    tone = records["tone"]["audio"].astype(int)  # [5, 128]
    assert tone.std() > 5  # real features, spread over the uint8 range
    # A steady tone sounds the same every second: its middle seconds' features agree (codec noise aside).
    assert np.mean(np.abs(tone[1:4] - tone[2]) <= 3) > 0.97
    np.testing.assert_array_equal(records["quiet"]["audio"], 0)  # no audio stream: zeros, counted
    metadata = json.loads((output.parent / "part-metadata.json").read_text())
    assert metadata["audio"].startswith("VGGish")


def test_a_file_gone_or_unreadable_when_decoded_is_an_unreadable_dead_letter(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.extract_transforms import DecodeVideos, VideoFile
    from pipelines.transforms import DEAD_LETTER

    # Listed with its size, then deleted (or made unreadable) before a worker opens it.
    gone = VideoFile(str(tmp_path / "gone.mp4"), 2048, "gone", ())
    with TestPipeline() as pipeline:
        decoded = (
            pipeline
            | beam.Create([gone])
            | DecodeVideos(image_size=(32, 32), max_frames=300, with_audio=False)
        )
        reasons = decoded[DEAD_LETTER] | beam.Map(lambda letter: (letter["id"], letter["reason"]))
        assert_that(reasons, equal_to([("gone", "unreadable")]))
        assert_that(decoded.videos, equal_to([]), label="NoVideos")
