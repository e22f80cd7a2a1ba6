"""Retrieval quality by label overlap: raw features vs model embeddings, cosine vs PCA-whitened index.

    # Real data (issue 5): held-out files 0100-0127; the scores come from a `video` model trained on
    # files 0000-0099, scored with pipelines.score on the same held-out files.
    python benchmarks/bench_retrieval_quality.py \\
        --data '../shared/data/yt8m-2018-video-level/validate01[0-2][0-9].tfrecord' \\
        --scores 'runs/scores/heldout-*.parquet' --output runs/retrieval_quality

    # Without --scores only the raw-feature rows are measured.

For every video, the raw features are `mean_rgb ⧺ mean_audio` (1152 floats) read from the TFRecords
(frame-level records are mean-pooled over their frames, so the same command compares NeXtVLAD
embeddings with mean-pooled frame features on a frame-level corpus). Rows of the table:

1. raw features, cosine (exact search over the L2-normalised features);
2. raw features, PCA-whitened by `pipelines.index` (the same job as for embeddings);
3. model embedding, cosine (with --scores);
4. model embedding, PCA-whitened by `pipelines.index` (with --scores): the shipped index.

All rows use the same videos (those present in both inputs) and the same queries (labelled videos
sampled with a fixed seed); precision@k and mAP@k are defined in `pipelines.search.evaluate_retrieval`.
The PCA-whitening is learned on the searched corpus itself without labels, as an index is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# This process runs tensorflow-transform (docs/design.md, "Known traps of this stack").
os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def read_raw_features(pattern: str) -> tuple[list[str], list[list[int]], np.ndarray]:
    """`(ids, labels, features [N, 1152])` from YouTube-8M TFRecords (frame level: mean over frames)."""
    import tensorflow as tf

    from nextvlad import yt8m

    ids, labels, features = [], [], []
    for path in yt8m.expand_file_pattern(pattern):
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            try:
                video = yt8m.parse_video_example(record)
                rgb, audio = video["mean_rgb"], video["mean_audio"]
            except yt8m.InvalidRecordError as error:
                if error.reason != "wrong_record_kind":
                    raise
                video = yt8m.parse_frame_example(record)
                rgb, audio = video["rgb"].mean(axis=0), video["audio"].mean(axis=0)
            ids.append(video["id"])
            labels.append(list(video["labels"]))
            features.append(np.concatenate([rgb, audio]))
    return ids, labels, np.stack(features).astype(np.float32)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="TFRecords of the searched videos (raw features)")
    parser.add_argument("--scores", help="scored Parquet of the same videos (model embeddings)")
    parser.add_argument("--output", required=True, help="working folder (indexes, results.json)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--queries", type=int, default=2000, help="sampled labelled queries (default 2000)")
    parser.add_argument("--dim", type=int, default=256, help="PCA output size of the whitened rows (256)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from pipelines import index as index_job
    from pipelines.embeddings_io import read_tables
    from pipelines.search import build_index, evaluate_retrieval, load_index

    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    ids, labels, raw = read_raw_features(args.data)
    print(
        f"read {len(ids)} videos' raw features ({raw.shape[1]} floats) in {time.perf_counter() - start:.0f} s"
    )
    embeddings = None
    if args.scores:
        scores = read_tables(args.scores, columns=["id", "labels", "embedding"])
        score_ids = scores.column("id").to_pylist()
        common = set(ids) & set(score_ids)
        if len(common) < len(ids) or len(common) < len(score_ids):
            print(
                f"warning: {len(ids)} raw and {len(score_ids)} scored videos, {len(common)} in both: "
                "using those"
            )
        keep = [i for i, video_id in enumerate(ids) if video_id in common]
        ids, labels, raw = [ids[i] for i in keep], [labels[i] for i in keep], raw[keep]
        row_of = {video_id: row for row, video_id in enumerate(score_ids)}
        column = scores.column("embedding").combine_chunks()
        dim = len(column[0].as_py())
        all_embeddings = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        embeddings = all_embeddings[[row_of[video_id] for video_id in ids]].astype(np.float32)

    rng = np.random.default_rng(args.seed)
    labelled = [video_id for video_id, row in zip(ids, labels, strict=True) if row]
    query_ids = list(rng.choice(labelled, size=min(args.queries, len(labelled)), replace=False))

    inputs = [("raw mean_rgb+mean_audio", raw)]
    if embeddings is not None:
        inputs.append(("model embedding", embeddings))
    results = []
    for name, vectors in inputs:
        cosine = build_index(_normalize(vectors), ids=ids, labels=labels)
        results.append((f"{name}, cosine", evaluate_retrieval(cosine, k=args.k, query_ids=query_ids)))
        slug = name.split()[0]
        scored = os.path.join(args.output, f"{slug}-00000-of-00001.parquet")
        _write_scored(scored, ids, labels, vectors, model_version=name)
        index_dir = os.path.join(args.output, f"{slug}_index")
        index_job.run([f"--embeddings={scored}", f"--output={index_dir}", f"--dim={args.dim}"])
        whitened = load_index(index_dir)
        results.append(
            (
                f"{name}, PCA-whitened to {args.dim} (pipelines.index)",
                evaluate_retrieval(whitened, k=args.k, query_ids=query_ids),
            )
        )

    k = args.k
    lines = [
        f"| features | precision@{k} | mAP@{k} |",
        "| --- | --- | --- |",
        *(f"| {name} | {q.precision_at_k:.4f} | {q.map_at_k:.4f} |" for name, q in results),
    ]
    chance = results[0][1].chance_precision
    print(f"{len(ids)} videos, {results[0][1].num_queries} queries, chance precision@{k} = {chance:.4f}")
    print("\n".join(lines))
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/bench_retrieval_quality.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "videos": len(ids),
        "queries": len(query_ids),
        "results": {name: quality.to_dict() for name, quality in results},
    }
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
