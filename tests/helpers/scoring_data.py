"""Inputs for the scoring pipeline tests: tiny models, good and bad records, and an independent decoder.

Bad records are built here with plain protos (not with the writers under test), one per kind of problem
the dead letter must catch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

NUM_CLASSES = 7
HIDDEN_SIZE = 16
TINY = dict(num_classes=NUM_CLASSES, cluster_size=4, groups=2, hidden_size=HIDDEN_SIZE, gating_reduction=4)


def save_tiny_model(
    path: Path, *, input_format: str = "frame", seed: int = 0, rgb_scale=None, **overrides
) -> Path:
    """Saves a tiny serving model (random but fixed weights) to `path` (a `.keras` file) and returns it.

    `overrides` are ModelConfig fields (e.g. `max_frames`); `rgb_scale` makes it reverse-whiten rgb."""
    import keras

    from nextvlad import ModelConfig, build_model, serving_model

    if input_format == "video":
        overrides = dict(input_format="video", pooling="mean", **overrides)
    if rgb_scale is not None:
        overrides["reverse_whitening"] = True
    keras.utils.set_random_seed(seed)
    model = serving_model(build_model(ModelConfig(**{**TINY, **overrides}), rgb_scale=rgb_scale))
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def _bytes(*values: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def frame_record(
    video_id: str | None,
    labels,
    rgb_q: np.ndarray | None,
    audio_q: np.ndarray | None,
) -> bytes:
    """A frame-level SequenceExample built from protos; None drops the id / rgb / audio."""
    context = {"labels": _ints(labels)}
    if video_id is not None:
        context["id"] = _bytes(video_id.encode())
    lists = {}
    if rgb_q is not None:
        lists["rgb"] = tf.train.FeatureList(feature=[_bytes(bytes(row)) for row in rgb_q])
    if audio_q is not None:
        lists["audio"] = tf.train.FeatureList(feature=[_bytes(bytes(row)) for row in audio_q])
    return tf.train.SequenceExample(
        context=tf.train.Features(feature=context), feature_lists=tf.train.FeatureLists(feature_list=lists)
    ).SerializeToString()


def video_record(video_id: str, labels, mean_rgb, mean_audio) -> bytes:
    """A video-level Example built from protos."""
    features = {
        "id": _bytes(video_id.encode()),
        "labels": _ints(labels),
        "mean_rgb": _floats(mean_rgb),
        "mean_audio": _floats(mean_audio),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def random_frames(rng: np.random.Generator, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.integers(0, 256, (num_frames, 1024), dtype=np.uint8),
        rng.integers(0, 256, (num_frames, 128), dtype=np.uint8),
    )


def good_frame_records(
    rng: np.random.Generator, count: int, *, prefix: str, min_frames: int = 2, max_frames: int = 30
) -> dict[str, bytes]:
    """`count` valid frame-level records keyed by id, with 0-3 labels and random frame counts."""
    records = {}
    for i in range(count):
        video_id = f"{prefix}{i:03d}"
        labels = sorted(rng.choice(NUM_CLASSES, size=int(rng.integers(0, 4)), replace=False).tolist())
        records[video_id] = frame_record(
            video_id, labels, *random_frames(rng, int(rng.integers(min_frames, max_frames + 1)))
        )
    return records


def bad_frame_records(rng: np.random.Generator) -> dict[str, tuple[str | None, bytes]]:
    """One record per kind of invalid frame-level record: `reason -> (id or None, record bytes)`."""
    rgb, audio = random_frames(rng, 4)
    short_rgb = [bytes(row[:1000]) for row in rgb]
    bad_length = tf.train.SequenceExample(
        context=tf.train.Features(feature={"id": _bytes(b"bad-length")}),
        feature_lists=tf.train.FeatureLists(
            feature_list={
                "rgb": tf.train.FeatureList(feature=[_bytes(v) for v in short_rgb]),
                "audio": tf.train.FeatureList(feature=[_bytes(bytes(row)) for row in audio]),
            }
        ),
    ).SerializeToString()
    return {
        # A length-delimited field that claims more bytes than the record has.
        "not_an_example": (None, b"\x0a\xff\x01garbage"),
        "missing_id": (None, frame_record(None, [1], rgb, audio)),
        "missing_rgb": ("no-rgb", frame_record("no-rgb", [1], None, audio)),
        "missing_audio": ("no-audio", frame_record("no-audio", [1], rgb, None)),
        "bad_frame_length": ("bad-length", bad_length),
        "frame_count_mismatch": ("mismatch", frame_record("mismatch", [1], rgb, audio[:3])),
        "no_frames": ("no-frames", frame_record("no-frames", [1], rgb[:0], audio[:0])),
        "label_out_of_range": ("label-7", frame_record("label-7", [2, NUM_CLASSES], rgb, audio)),
        "wrong_record_kind": (
            "video-level",
            video_record("video-level", [1], rng.normal(size=1024), rng.normal(size=128)),
        ),
    }


def write_tfrecords(path: Path, records) -> Path:
    """Writes records with TensorFlow's own writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def decode_frame_record(data: bytes, *, max_frames: int = 300) -> dict:
    """Reference decoding of a frame-level record with the protos: the uint8 frames a model takes."""
    seq = tf.train.SequenceExample.FromString(data)
    lists = seq.feature_lists.feature_list

    def frames(name: str, size: int) -> np.ndarray:
        values = [f.bytes_list.value[0] for f in lists[name].feature][:max_frames]
        return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, size)

    rgb, audio = frames("rgb", 1024), frames("audio", 128)
    return {
        "id": seq.context.feature["id"].bytes_list.value[0].decode(),
        "labels": list(seq.context.feature["labels"].int64_list.value),
        "rgb": rgb,
        "audio": audio,
        "num_frames": len(rgb),
    }


def model_outputs(model, video: dict) -> dict[str, np.ndarray]:
    """`model.predict` on one video alone (batch of one, no padding): predictions [C], embedding [E]."""
    if "mean_rgb" in video:
        inputs = {"mean_rgb": video["mean_rgb"][None], "mean_audio": video["mean_audio"][None]}
    else:
        inputs = {
            "rgb": video["rgb"][None],
            "audio": video["audio"][None],
            "num_frames": np.array([video["num_frames"]], dtype=np.int32),
        }
    out = model.predict(inputs, verbose=0)
    return {"predictions": out["predictions"][0], "embedding": out["embedding"][0]}


def read_rows(pattern: str) -> list[dict]:
    """All rows of the Parquet files matching `pattern`, sorted by id (read with pyarrow)."""
    import glob

    import pyarrow.parquet as pq

    files = sorted(glob.glob(pattern))
    assert files, f"no Parquet output matches {pattern}"
    rows = [row for path in files for row in pq.read_table(path).to_pylist()]
    return sorted(rows, key=lambda r: r["id"])


def read_dead_letters(output: str) -> list[dict]:
    """All dead-letter entries of a run with output prefix `output`."""
    import glob
    import json

    files = sorted(glob.glob(f"{output}-errors-*-of-*.jsonl"))
    assert files, f"no dead-letter file matches {output}-errors-*-of-*.jsonl"
    return [json.loads(line) for path in files for line in Path(path).read_text().splitlines() if line]


@dataclasses.dataclass
class Corpus:
    """A tiny scoring corpus: the model's folder, the records' glob and the records by id."""

    model_dir: Path
    pattern: str
    records: dict  # id -> serialized record


def write_corpus(root: Path, num_videos: int, *, seed: int, prefix: str, max_frames: int) -> Corpus:
    """A tiny frame-level model (keeping `max_frames` frames) and `num_videos` videos of 2-30 frames in
    two files under `root`."""
    save_tiny_model(root / "model" / "model.keras", max_frames=max_frames)
    records = good_frame_records(np.random.default_rng(seed), num_videos, prefix=prefix)
    items = list(records.values())
    for shard in range(2):
        write_tfrecords(root / "data" / f"part-{shard}.tfrecord", items[shard::2])
    return Corpus(root / "model", str(root / "data" / "part-*.tfrecord"), records)


def score_args(corpus: Corpus, output: Path, *extra: str) -> list[str]:
    """`pipelines.score` arguments for `corpus` into the `output` prefix, on the DirectRunner."""
    return [
        "--runner=DirectRunner",
        f"--input={corpus.pattern}",
        f"--model={corpus.model_dir}",
        f"--output={output}",
        *extra,
    ]
