"""Retrieval quality by label overlap for each index transform, on raw features and on model embeddings.

    # Real data: the held-out files 0100-0127; --scores from a `video` model trained on files 0000-0099,
    # run through pipelines.score on the same held-out files.
    python benchmarks/bench_retrieval_quality.py \\
        --data '../shared/data/yt8m-2018-video-level/validate01[0-2][0-9].tfrecord' \\
        --scores 'runs/heldout_scores-*.parquet' --output runs/retrieval_quality

    # Without --scores only the raw-feature rows are measured.

For every video, the raw features are `mean_rgb ⧺ mean_audio` (1152 floats) read from the TFRecords
(frame-level records: the mean of the dequantized frames, so the same command compares NeXtVLAD
embeddings with mean-pooled frame features on a frame-level corpus). Each kind of features is indexed by
`pipelines.index` once per `--transforms` entry (`raw`, `pca`, `pca_power`, `whiten`: see
`python -m pipelines.index --help`), the PCA-based ones to the same `--dim`, each learned on the searched
corpus itself without labels, as an index is. `raw` is plain cosine similarity (L2 normalisation only).

Every row uses the same videos (those present in both inputs) and the same queries (`--queries`
labelled videos sampled with `--seed`); precision@k and mAP@k are defined in
`pipelines.retrieval_metrics.evaluate_retrieval`. The table and `OUTPUT/results.json` give both, with
standard errors of precision@k by batch means over `--folds` disjoint folds of the queries: each row's
own, and that of its difference from the first transform's row on the same features (paired: the same
queries in the same folds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from nextvlad import records  # noqa: E402
from nextvlad.files import expand_pattern, iter_tfrecords  # noqa: E402


def read_raw_features(pattern: str) -> tuple[list[str], list[list[int]], np.ndarray]:
    """`(ids, labels, features [N, 1152])` from YouTube-8M TFRecords (frame level: mean over frames)."""
    ids, labels, features = [], [], []
    for path in expand_pattern(pattern):
        for record in iter_tfrecords(path):
            try:
                video = records.parse_video_example(record, num_classes=None)
                rgb, audio = video["mean_rgb"], video["mean_audio"]
            except records.InvalidRecordError as error:
                if error.reason != "wrong_record_kind":
                    raise
                video = records.parse_frame_example(record, num_classes=None)
                rgb = records.dequantize(video["rgb"]).mean(axis=0)
                audio = records.dequantize(video["audio"]).mean(axis=0)
            ids.append(video["id"])
            labels.append(list(video["labels"]))
            features.append(np.concatenate([rgb, audio]))
    return ids, labels, np.stack(features).astype(np.float32)


def _write_scored(path: str, ids, labels, embeddings: np.ndarray, model_version: str) -> None:
    """A Parquet file in the score output's columns, so pipelines.index can read it."""
    count, dim = embeddings.shape
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "num_frames": pa.array(np.zeros(count, np.int32)),
            "labels": pa.array(labels, pa.list_(pa.int32())),
            "top_classes": pa.array([[]] * count, pa.list_(pa.int32())),
            "top_scores": pa.array([[]] * count, pa.list_(pa.float32())),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dim),
            "model_version": pa.array([model_version] * count, pa.string()),
        }
    )
    pq.write_table(table, path, row_group_size=4096)


def _read_embeddings(pattern: str, ids: list[str]) -> tuple[list[str], np.ndarray]:
    """`(kept ids, embeddings [N, E])`: the scored videos among `ids`, in `ids`' order."""
    from pipelines.embeddings_io import embedding_matrix, read_tables

    scores = read_tables(pattern, columns=["id", "embedding"])
    score_ids = scores.column("id").to_pylist()
    column = scores.column("embedding").combine_chunks()
    dim = len(column[0].as_py())
    embeddings = embedding_matrix(column, dim=dim, ids=score_ids, source=pattern)  # [N, E]
    row_of = {video_id: row for row, video_id in enumerate(score_ids)}
    kept = [video_id for video_id in ids if video_id in row_of]
    if len(kept) < len(ids) or len(kept) < len(score_ids):
        print(f"warning: {len(ids)} raw and {len(score_ids)} scored videos, {len(kept)} in both: using those")
    return kept, embeddings[[row_of[video_id] for video_id in kept]]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="TFRecords of the searched videos (raw features)")
    parser.add_argument("--scores", help="scored Parquet of the same videos (model embeddings)")
    parser.add_argument("--output", required=True, help="working folder (indexes, results.json)")
    parser.add_argument(
        "--transforms",
        default="raw,pca,pca_power,whiten",
        help="comma-separated pipelines.index transforms, one row each (default: all four)",
    )
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--queries", type=int, default=2000, help="sampled labelled queries (default 2000)")
    parser.add_argument("--dim", type=int, default=256, help="PCA output size of every PCA-based row (256)")
    parser.add_argument("--seed", type=int, default=0, help="query sampling seed (default 0)")
    parser.add_argument(
        "--folds", type=int, default=10, help="query folds for the standard errors (default 10)"
    )
    args = parser.parse_args(argv)
    from pipelines.embedding_transform import TRANSFORMS

    args.transforms = [name.strip() for name in args.transforms.split(",") if name.strip()]
    unknown = [name for name in args.transforms if name not in TRANSFORMS]
    if args.folds < 2:
        parser.error(f"--folds {args.folds}: at least 2 are needed for a standard error")
    if unknown or not args.transforms:
        parser.error(f"--transforms {unknown or args.transforms}: choose from {', '.join(TRANSFORMS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from pipelines import index as index_job
    from pipelines.retrieval_index import load_index
    from pipelines.retrieval_metrics import evaluate_retrieval

    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    ids, labels, raw = read_raw_features(args.data)
    print(
        f"read {len(ids)} videos' raw features ({raw.shape[1]} floats) in {time.perf_counter() - start:.0f} s"
    )
    inputs = [("raw mean_rgb+mean_audio", raw)]
    if args.scores:
        kept, embeddings = _read_embeddings(args.scores, ids)
        keep = set(kept)
        rows = [i for i, video_id in enumerate(ids) if video_id in keep]
        ids, labels, raw = kept, [labels[i] for i in rows], raw[rows]
        inputs = [("raw mean_rgb+mean_audio", raw), ("model embedding", embeddings)]

    rng = np.random.default_rng(args.seed)
    labelled = [video_id for video_id, row in zip(ids, labels, strict=True) if row]
    query_ids = list(rng.choice(labelled, size=min(args.queries, len(labelled)), replace=False))

    # Standard errors by batch means: the queries in `--folds` disjoint folds, each row scored on each fold.
    # Rows of one kind of features share the folds, so their differences are paired.
    folds = [list(fold) for fold in np.array_split(np.array(query_ids, dtype=object), args.folds)]
    results = []  # (features, transform, dim, quality, index seconds, [F] precision@k per fold)
    for name, vectors in inputs:
        slug = name.split()[0]
        scored = os.path.join(args.output, f"{slug}-00000-of-00001.parquet")
        _write_scored(scored, ids, labels, vectors, model_version=name)
        for transform in args.transforms:
            index_dir = os.path.join(args.output, f"{slug}_{transform}")
            flags = [f"--embeddings={scored}", f"--output={index_dir}", f"--transform={transform}"]
            if transform != "raw":
                flags.append(f"--dim={args.dim}")
            metadata = index_job.run(flags)
            index = load_index(index_dir)
            quality = evaluate_retrieval(index, k=args.k, query_ids=query_ids)
            by_fold = np.array(
                [evaluate_retrieval(index, k=args.k, query_ids=fold).precision_at_k for fold in folds]
            )
            results.append(
                (name, transform, metadata["dim"], quality, metadata["timings_s"]["total"], by_fold)
            )
            print(
                f"{name}, {transform} ({metadata['dim']}-d): precision@{args.k} {quality.precision_at_k:.4f}"
            )

    k = args.k
    reference = {}  # features -> (precision@k, per fold) of its first transform, for the paired Δ
    rows = []
    for name, transform, dim, q, seconds, by_fold in results:
        base, base_folds = reference.setdefault(name, (q.precision_at_k, by_fold))
        se = by_fold.std(ddof=1) / np.sqrt(len(folds))
        delta_se = (by_fold - base_folds).std(ddof=1) / np.sqrt(len(folds))
        delta = f"{q.precision_at_k - base:+.4f} ± {delta_se:.4f}"
        rows.append(
            f"| {name} | {transform} | {dim} | {q.precision_at_k:.4f} ± {se:.4f} | {delta} | "
            f"{q.map_at_k:.4f} | {seconds:.0f} |"
        )
    lines = [
        f"| features | transform | dim | precision@{k} ± SE | Δ vs {args.transforms[0]} ± SE | mAP@{k} | "
        "index job s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]
    first = results[0][3]
    print(
        f"{len(ids)} videos, {first.num_queries} queries evaluated ({first.skipped_no_relevant} of "
        f"{len(query_ids)} skipped: no relevant video), seed {args.seed}, chance precision@{k} = "
        f"{first.chance_precision:.4f}"
    )
    print("\n".join(lines))
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/bench_retrieval_quality.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "videos": len(ids),
        "queries": len(query_ids),
        "seed": args.seed,
        "folds": len(folds),
        "results": [
            {
                "features": name,
                "transform": transform,
                "dim": dim,
                "index_job_s": seconds,
                **q.to_dict(),
                "precision_at_k_by_fold": by_fold.tolist(),
            }
            for name, transform, dim, q, seconds, by_fold in results
        ],
    }
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
