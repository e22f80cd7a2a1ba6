"""Synthetic frame-level corpus in the exact YouTube-8M format, for tests, benchmarks and the demo.

Run:

    python -m nextvlad.synthetic --output /tmp/synthetic --num_videos 1000 --num_classes 20 --shards 4

writes `/tmp/synthetic/synthetic-0000{0..3}-of-00004.tfrecord` (`tf.train.SequenceExample`: context
`id`, `labels`; feature lists `rgb` 1024 uint8 and `audio` 128 uint8 per frame) and
`/tmp/synthetic/label_names.csv`, then prints a summary (files, videos, videos/s, label counts). With
`--segments` the records also carry 2019-style segment ratings and `segment_label_ids.csv` lists the
rated classes.

How the videos are made (which scenes their frames show, the `--setting` recipes, truthful segment
ratings) is described in `nextvlad.synthetic_videos`.

Determinism: video `i` depends only on the seed, its index and the content arguments (classes, frame
and label ranges; `--prefix` names its id), never on `--shards` or `--num_videos`: the shards are
contiguous slices of one stream, so the same seed gives byte-identical records however the corpus
is sharded.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from nextvlad import records, segments
from nextvlad.synthetic_videos import BLOCK_SIZE, SETTINGS, GeneratedVideo, VideoGenerator

logger = logging.getLogger(__name__)

LABEL_NAMES_FILE = "label_names.csv"
SEGMENT_LABEL_IDS_FILE = "segment_label_ids.csv"  # the rated classes, as the 2019 release ships them


def _validate(
    *,
    num_videos: int,
    num_classes: int,
    shards: int,
    min_frames: int,
    max_frames: int,
    min_labels: int,
    max_labels: int,
    prefix: str,
) -> None:
    def positive(name: str, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")

    positive("num_videos", num_videos)
    positive("num_classes", num_classes)
    positive("shards", shards)
    positive("min_frames", min_frames)
    positive("max_frames", max_frames)
    if shards > num_videos:
        raise ValueError(
            f"shards={shards} is more than num_videos={num_videos}; every shard needs at least one video. "
            "Lower --shards or raise --num_videos."
        )
    if min_frames > max_frames:
        raise ValueError(f"min_frames={min_frames} is larger than max_frames={max_frames}; swap or fix them.")
    if min_labels < 0 or min_labels > max_labels:
        raise ValueError(
            f"labels per video must satisfy 0 <= min <= max; got min={min_labels}, max={max_labels}."
        )
    if max_labels > num_classes:
        raise ValueError(
            f"max labels per video ({max_labels}) exceeds num_classes ({num_classes}); a video cannot hold "
            "more distinct labels than there are classes."
        )
    if not prefix or "/" in prefix or any(c.isspace() for c in prefix):
        raise ValueError(
            f"prefix must be a non-empty file-name prefix without '/' or spaces; got {prefix!r}."
        )


def shard_path(output_dir: str, prefix: str, shard: int, shards: int) -> str:
    """Path of one shard: `{output_dir}/{prefix}-{shard:05d}-of-{shards:05d}.tfrecord`."""
    return os.path.join(output_dir, f"{prefix}-{shard:05d}-of-{shards:05d}.tfrecord")


def generate_corpus(
    output_dir: str | os.PathLike,
    *,
    num_videos: int = 1000,
    num_classes: int = 20,
    shards: int = 4,
    seed: int = 0,
    min_frames: int = 30,
    max_frames: int = 120,
    labels_per_video: tuple[int, int] = (1, 4),
    prefix: str = "synthetic",
    setting: str = "standard",
    segment_ratings: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a synthetic frame-level YouTube-8M corpus (its design: `nextvlad.synthetic_videos`).

    Args:
        output_dir: directory (local or gs://) for the shards and `label_names.csv`; created if missing.
        num_videos: videos in total.
        num_classes: label vocabulary size.
        shards: number of TFRecord files; videos are split into contiguous, near-equal slices.
        seed: random seed; equal arguments give byte-identical files, and each video's record is the
            same for any `shards` / `num_videos`.
        min_frames: fewest frames per video (inclusive).
        max_frames: most frames per video (inclusive); readers keep at most 300.
        labels_per_video: (min, max) labels per video, inclusive; min 0 allows unlabeled videos.
        prefix: file-name prefix of the shards, also the prefix of video ids.
        setting: `standard`, `hard` (rarer and shorter class evidence) or `noisy` (`standard` videos
            under incomplete and partly wrong labels); see `nextvlad.synthetic_videos`.
        segment_ratings: when positive, rate 5-frame segments as the 2019 release does (see the module
            docstring): per label of a video, up to this many windows showing it (1) and as many without
            it (0); the rated classes are written to `segment_label_ids.csv`. 0: no ratings.
        progress: show a progress bar on stderr.

    Returns:
        Summary dict: `output_dir`, `files` (shard paths), `label_names` (CSV path), `num_videos`,
        `num_frames`, `num_classes`, `seed`, `setting`, `bytes` (records' total size), `seconds`,
        `videos_per_second`, `label_counts` (videos per class, list of length num_classes) and
        `labels_per_video` (dict: label count -> videos); with segment ratings also `segment_label_ids`
        (CSV path), `ratings` and `positive_ratings`.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """
    if len(labels_per_video) != 2:
        raise ValueError(f"labels_per_video must be a (min, max) pair; got {labels_per_video!r}.")
    min_labels, max_labels = (int(v) for v in labels_per_video)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    _validate(
        num_videos=num_videos,
        num_classes=num_classes,
        shards=shards,
        min_frames=min_frames,
        max_frames=max_frames,
        min_labels=min_labels,
        max_labels=max_labels,
        prefix=prefix,
    )
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}.")
    if isinstance(segment_ratings, bool) or not isinstance(segment_ratings, int) or segment_ratings < 0:
        raise ValueError(f"segment_ratings must be an integer >= 0; got {segment_ratings!r}.")
    output_dir = os.fspath(output_dir)
    started = time.perf_counter()
    if "://" not in output_dir:
        os.makedirs(output_dir, exist_ok=True)
    generator = VideoGenerator(
        num_classes=num_classes,
        seed=seed,
        min_frames=min_frames,
        max_frames=max_frames,
        min_labels=min_labels,
        max_labels=max_labels,
        id_prefix=f"{prefix}-{seed}-",
        setting=SETTINGS[setting],
        segment_ratings=segment_ratings,
    )

    label_counts = np.zeros(num_classes, dtype=np.int64)
    labels_per_video_hist: collections.Counter[int] = collections.Counter()
    totals = {"frames": 0, "bytes": 0, "ratings": 0, "positive_ratings": 0}

    def stream() -> Iterator[GeneratedVideo]:
        for block in range((num_videos + BLOCK_SIZE - 1) // BLOCK_SIZE):
            count = min(BLOCK_SIZE, num_videos - block * BLOCK_SIZE)
            yield from generator.block(block, count)

    def tally(generated: Iterator[GeneratedVideo], bar: Any) -> Iterator[bytes]:
        for video in generated:
            label_counts[video.labels] += 1
            labels_per_video_hist[len(video.labels)] += 1
            totals["frames"] += video.frames
            totals["bytes"] += len(video.record)
            totals["ratings"] += video.ratings
            totals["positive_ratings"] += video.positive_ratings
            bar.update(1)
            yield video.record

    generated = stream()
    files = []
    with tqdm(total=num_videos, unit="video", disable=not progress, file=sys.stderr) as bar:
        for shard in range(shards):
            begin, end = shard * num_videos // shards, (shard + 1) * num_videos // shards
            path = shard_path(output_dir, prefix, shard, shards)
            records.write_tfrecords(path, tally(itertools.islice(generated, end - begin), bar))
            files.append(path)

    label_names = os.path.join(output_dir, LABEL_NAMES_FILE)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label_id", "label_name"])
    writer.writerows((c, f"class_{c:04d}") for c in range(num_classes))
    records.write_bytes(label_names, buffer.getvalue().encode())
    segment_summary = {}
    if segment_ratings:
        # Every class can be rated here; the 2019 release rates 1,000 of its 3,862.
        segment_label_ids = os.path.join(output_dir, SEGMENT_LABEL_IDS_FILE)
        segments.write_class_ids(segment_label_ids, range(num_classes))
        segment_summary = {
            "segment_label_ids": segment_label_ids,
            "ratings": totals["ratings"],
            "positive_ratings": totals["positive_ratings"],
        }

    seconds = time.perf_counter() - started
    summary = {
        "output_dir": output_dir,
        "files": files,
        "label_names": label_names,
        "num_videos": num_videos,
        "num_frames": totals["frames"],
        "num_classes": num_classes,
        "seed": seed,
        "setting": setting,
        "bytes": totals["bytes"],
        "seconds": seconds,
        "videos_per_second": num_videos / seconds if seconds > 0 else float("inf"),
        "label_counts": label_counts.tolist(),
        "labels_per_video": dict(sorted(labels_per_video_hist.items())),
        **segment_summary,
    }
    logger.info(
        "wrote %d videos (%d frames) in %d files to %s in %.2fs (%.0f videos/s)",
        num_videos,
        totals["frames"],
        shards,
        output_dir,
        seconds,
        summary["videos_per_second"],
    )
    return summary


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nextvlad.synthetic",
        description=(
            "Write a synthetic frame-level corpus in the YouTube-8M SequenceExample format "
            "(rgb 1024 + audio 128 uint8 per frame) plus label_names.csv. Labels are learnable from "
            "which scenes the frames show, and only weakly from the mean of the frames."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--output", required=True, default=argparse.SUPPRESS, help="output directory (local or gs://)"
    )
    parser.add_argument("--num_videos", type=int, default=1000, help="videos in total")
    parser.add_argument("--num_classes", type=int, default=20, help="label vocabulary size")
    parser.add_argument("--shards", type=int, default=4, help="number of TFRecord files")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--min_frames", type=int, default=30, help="fewest frames per video")
    parser.add_argument("--max_frames", type=int, default=120, help="most frames per video")
    parser.add_argument(
        "--labels_per_video",
        type=int,
        nargs=2,
        default=(1, 4),
        metavar=("MIN", "MAX"),
        help="range of labels per video, inclusive (MIN 0 allows unlabeled videos)",
    )
    parser.add_argument(
        "--prefix", default="synthetic", help="shard file-name prefix: PREFIX-SSSSS-of-NNNNN.tfrecord"
    )
    parser.add_argument(
        "--setting",
        choices=list(SETTINGS),
        default="standard",
        help="corpus recipe: hard shows each label's scenes in fewer, shorter shots (for many classes); "
        "noisy writes the standard videos with incomplete and partly wrong labels",
    )
    parser.add_argument(
        "--segments",
        action="store_true",
        help="also rate 5-frame segments as the YouTube-8M 2019 release does (segment_start_times, "
        "segment_labels, segment_scores): per label of a video, windows that show its scenes rated 1 and "
        "windows of the same video that do not rated 0; writes segment_label_ids.csv",
    )
    parser.add_argument(
        "--segment_ratings",
        type=int,
        default=3,
        help="with --segments: rated windows per label and video, up to this many of each rating",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = generate_corpus(
            args.output,
            num_videos=args.num_videos,
            num_classes=args.num_classes,
            shards=args.shards,
            seed=args.seed,
            min_frames=args.min_frames,
            max_frames=args.max_frames,
            labels_per_video=tuple(args.labels_per_video),
            prefix=args.prefix,
            setting=args.setting,
            segment_ratings=args.segment_ratings if args.segments else 0,
            progress=not args.quiet,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = summary["label_counts"]
    print(
        f"Wrote {summary['num_videos']} videos ({summary['num_frames']} frames, "
        f"{summary['bytes'] / 1e6:.1f} MB) to {len(summary['files'])} files in {summary['output_dir']}"
    )
    print(f"  {summary['files'][0]}" + (f" ... {summary['files'][-1]}" if len(summary["files"]) > 1 else ""))
    print(f"  labels: {summary['label_names']} ({summary['num_classes']} classes)")
    print(f"  speed: {summary['videos_per_second']:.0f} videos/s ({summary['seconds']:.2f} s)")
    per_video = ", ".join(f"{k}: {v}" for k, v in summary["labels_per_video"].items())
    print(f"  labels per video: {per_video}")
    shown = ", ".join(f"{c}: {n}" for c, n in enumerate(counts[:10])) + (", ..." if len(counts) > 10 else "")
    print(f"  videos per class (ids in order of expected frequency): {shown}")
    print(f"  rarest class: {int(np.argmin(counts))} with {min(counts)} videos")
    if "ratings" in summary:
        print(
            f"  segment ratings: {summary['ratings']} ({summary['positive_ratings']} present), rated classes "
            f"in {summary['segment_label_ids']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
