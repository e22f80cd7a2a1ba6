"""The YouTube-8M 2019 (segment task) Kaggle submission file, from `pipelines.score --segments` output.

Run, after scoring the test set's segments:

    python -m pipelines.segment_submission --segments 'scores/test_segments-*.parquet' \\
        --segment_classes segment_label_ids.csv --output submission.csv

writes `Class,Segments`: one line per rated class, its segments as `videoid:start_time` separated by spaces,
by descending score, at most `--max_segments` (100,000, the challenge's cut) per class; then prints a short
summary. A segment is a candidate for a class when the class is among the segment's `top_classes`, so
score with `--segment_classes` (the same rated list) and a `--segment_top_k` large enough that the classes
you submit are in every segment's list.

The rows are streamed (Parquet record batches) through `nextvlad.segments.SegmentRanking`: memory holds at
most `--max_segments` entries per class plus one block, never all the segments of the corpus. Ties keep
the order of the files (sorted) and of their rows.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from nextvlad.segments import MAX_SEGMENTS_PER_CLASS, SegmentRanking, read_class_ids

logger = logging.getLogger(__name__)

COLUMNS = ("id", "start_time", "top_classes", "top_scores")
_READ_ROWS = 65_536  # segment rows per Parquet record batch


def _files(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    if not paths:
        raise FileNotFoundError(
            f"--segments {pattern!r} matches no files; pass the segment rows of a "
            "`pipelines.score --segments` run, e.g. 'scores/run1_segments-*.parquet'"
        )
    return paths


def _batches(path: str) -> Iterator[Any]:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        parquet = pq.ParquetFile(f)
        missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(
                f"{path} has no column(s) {missing}: it is not the segment output of "
                f"`pipelines.score --segments` (its columns are {parquet.schema_arrow.names})"
            )
        yield from parquet.iter_batches(batch_size=_READ_ROWS, columns=list(COLUMNS))


def rank_segments(
    pattern: str, *, classes: Sequence[int] | None = None, max_segments: int = MAX_SEGMENTS_PER_CLASS
) -> tuple[SegmentRanking, int]:
    """Streams segment rows into a per-class ranking.

    Args:
        pattern: glob of `{output}_segments-*.parquet` files (local or gs://).
        classes: the classes to rank (e.g. the 1,000 rated ones); None: every class that appears.
        max_segments: segments kept per class.

    Returns:
        `(ranking, rows read)`; keys are `"videoid:start_time"` strings.
    """
    ranking = SegmentRanking(limit=max_segments)
    wanted = None if classes is None else np.asarray(sorted(set(classes)), dtype=np.int64)
    rows = 0
    for path in _files(pattern):
        for batch in _batches(path):
            top_classes, top_scores = batch.column("top_classes"), batch.column("top_scores")
            per_row = top_classes.value_lengths().to_numpy(zero_copy_only=False)  # [n]
            segment_keys = np.array(
                [
                    f"{v}:{t}"
                    for v, t in zip(
                        batch.column("id").to_pylist(), batch.column("start_time").to_pylist(), strict=True
                    )
                ]
            )  # [n]
            found = top_classes.flatten().to_numpy(zero_copy_only=False).astype(np.int64)  # [Σ k]
            scores = top_scores.flatten().to_numpy(zero_copy_only=False)
            keys = np.repeat(segment_keys, per_row)
            if wanted is not None:
                keep = np.isin(found, wanted)
                found, scores, keys = found[keep], scores[keep], keys[keep]
            ranking.add(found, scores, keys)
            rows += batch.num_rows
    return ranking, rows


def write_submission(
    path: str, ranking: SegmentRanking, *, classes: Sequence[int] | None = None
) -> dict[str, int]:
    """Writes `Class,Segments` lines, one per class, ascending (local or gs://).

    Args:
        path: the CSV.
        ranking: from `rank_segments`.
        classes: the classes to write, each on its line even when no segment was found for it; None: the
            classes the ranking holds.

    Returns:
        `{"classes": lines written, "segments": entries written, "empty_classes": ...}`.
    """
    from apache_beam.io.filesystems import FileSystems

    classes = sorted(set(classes)) if classes is not None else ranking.classes()
    written = empty = 0
    with FileSystems.create(path) as f:
        f.write(b"Class,Segments\n")
        for class_id in classes:
            keys, _ = ranking.ranked(class_id)
            f.write(f"{class_id},{' '.join(keys.tolist())}\n".encode())
            written += keys.size
            empty += keys.size == 0
    return {"classes": len(classes), "segments": int(written), "empty_classes": int(empty)}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.segment_submission",
        description="Write the YouTube-8M 2019 segment-task submission (Class,Segments) from the segment "
        "rows of `pipelines.score --segments`, streaming them with bounded memory.",
    )
    parser.add_argument(
        "--segments", required=True, help="glob of segment rows, e.g. 'scores/test_segments-*.parquet'"
    )
    parser.add_argument("--output", required=True, help="the submission CSV (local or gs://)")
    parser.add_argument(
        "--segment_classes",
        help="CSV of the classes to submit, one id per line (e.g. the 2019 segment_label_ids.csv); every "
        "one gets a line. Default: every class found in the segments' top classes",
    )
    parser.add_argument(
        "--max_segments",
        type=int,
        default=MAX_SEGMENTS_PER_CLASS,
        help=f"segments listed per class (default {MAX_SEGMENTS_PER_CLASS:,}, the challenge's cut)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        if args.max_segments < 1:
            raise ValueError(f"--max_segments={args.max_segments} must be >= 1")
        classes = read_class_ids(args.segment_classes) if args.segment_classes else None
        ranking, rows = rank_segments(args.segments, classes=classes, max_segments=args.max_segments)
        counts = write_submission(args.output, ranking, classes=classes)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    empty = f" ({counts['empty_classes']} with no segment)" if counts["empty_classes"] else ""
    print(
        f"Wrote {args.output}: {counts['classes']} classes{empty}, {counts['segments']:,} segment entries "
        f"from {rows:,} segment rows in {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
