"""`pipelines.extract` reading videos from and writing records to `gs://`, against a local GCS emulator."""

import json

from extraction_helpers import block_codes, identity_pca, tiny_backbone

from nextvlad.extraction.clips import write_clip
from nextvlad.files import iter_tfrecords
from nextvlad.records import parse_frame_example
from pipelines import extract

pytest_plugins = ["emulators"]


def test_videos_on_gs_become_records_on_gs(gcs_emulator, tmp_path):
    write_clip(str(tmp_path / "walk.mp4"), duration=3.0, fps=2, tone_hz=300)  # moov at the end: needs seeks
    write_clip(str(tmp_path / "talk.webm"), duration=2.0, fps=2)
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name in ("walk.mp4", "talk.webm", "empty.mp4"):
        gcs_emulator.upload(tmp_path / name, f"videos/{name}")
    output = gcs_emulator.url("features/part")
    summary = extract.run(
        [
            "--runner=DirectRunner",
            f"--input={gcs_emulator.url('videos/*')}",
            f"--output={output}",
            f"--backbone={tiny_backbone(tmp_path / 'tiny.keras')}",
            f"--pca_dir={identity_pca(tmp_path / 'pca')}",
            "--num_shards=1",
        ]
    )
    assert summary.files_matched == 3 and summary.videos_extracted == 2
    assert summary.dead_letters == {"empty_file": 1}
    names = gcs_emulator.list("features/")
    assert "features/part-00000-of-00001.tfrecord" in names and "features/part-metadata.json" in names
    assert not [n for n in names if n.endswith(".tmp")], names
    local = gcs_emulator.download("features/part-00000-of-00001.tfrecord", tmp_path / "part.tfrecord")
    records = {e["id"]: e for e in (parse_frame_example(r) for r in iter_tfrecords(str(local)))}
    assert {k: block_codes(v["rgb"]) for k, v in records.items()} == {"walk": [0, 1, 2], "talk": [0, 1]}
    letters = gcs_emulator.download(next(n for n in names if "-errors-" in n), tmp_path / "errors.jsonl")
    (letter,) = [json.loads(line) for line in letters.read_text().splitlines()]
    assert letter["source_file"] == gcs_emulator.url("videos/empty.mp4") and letter["reason"] == "empty_file"
