"""Videos similar to a given one, from an index built by `pipelines.index`; and retrieval quality.

Neighbours of an indexed video (similarity = cosine of the index's L2-normalised vectors, in the space
chosen by `pipelines.index --transform`):

    python -m pipelines.search --index runs/index --id VIDEO_ID -k 10 \\
        --label_names ../shared/data/label_names_2018.csv

A video that is not in the index, taken from a scored Parquet file and passed through the same saved
tensorflow-transform function (`INDEX/transform_fn`) as the corpus:

    python -m pipelines.search --index runs/index --query_parquet scores/new-00000-of-00001.parquet \\
        --query_id VIDEO_ID

Retrieval quality by label overlap over sampled queries (see `evaluate_retrieval`), printed and
written as JSON (default `INDEX/retrieval_quality.json`):

    python -m pipelines.search --index runs/index --evaluate --queries 1000 -k 10

Library code: the index (`build_index`, `save_index`, `load_index`, `search`) is in
`pipelines.retrieval_index`, the query transform (`transform_embeddings`, `index_transform`) in
`pipelines.embedding_transform`, and `evaluate_retrieval` in `pipelines.retrieval_metrics`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems

from nextvlad.files import write_bytes
from nextvlad.records import read_label_names
from pipelines.embedding_transform import index_transform, transform_embeddings
from pipelines.embeddings_io import RetrievalInputError, read_query_embedding
from pipelines.retrieval_index import RetrievalIndex, load_index, search_excluding
from pipelines.retrieval_metrics import RetrievalQuality, evaluate_retrieval

logger = logging.getLogger(__name__)


def _format_labels(labels: np.ndarray, names: Mapping[int, str] | None) -> str:
    if names is None:
        return " ".join(str(label) for label in labels)
    return ", ".join(f"{names.get(int(label)) or '?'} ({label})" for label in labels)


def format_neighbours(
    index: RetrievalIndex,
    similarities: np.ndarray,
    positions: np.ndarray,
    *,
    query: str,
    query_labels: np.ndarray | None = None,
    label_names: Mapping[int, str] | None = None,
) -> str:
    """A plain-text table of one query's neighbours: rank, id, similarity, labels.

    Args:
        index: the index the positions refer to.
        similarities, positions: `[k]` results of one query (position -1 = no result).
        query: how to name the query in the heading (its id).
        query_labels: the query's labels, shown in the heading when given.
        label_names: `label_id -> name`; labels are shown as `name (id)` when given (`?` for blanks).

    Returns:
        The table, lines joined with newlines.
    """
    heading = f"query {query}"
    if query_labels is not None:
        heading += f"  labels: {_format_labels(query_labels, label_names) or '-'}"
    rows = [
        (str(rank), str(index.ids[pos]), f"{sim:.4f}", _format_labels(index.labels[pos], label_names) or "-")
        for rank, (sim, pos) in enumerate(zip(similarities, positions, strict=True), start=1)
        if pos >= 0
    ]
    header = ("rank", "id", "similarity", "labels")
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    aligned = (">", "<", ">", "<")

    def line(cells: Sequence[str]) -> str:
        parts = [
            f"{cell:{align}{width}}" for cell, align, width in zip(cells[:-1], aligned, widths, strict=False)
        ]
        return "  ".join([*parts, cells[-1]]).rstrip()

    return "\n".join([heading, line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def format_quality(quality: RetrievalQuality, *, index_dir: str, transform: str | None = None) -> str:
    """The evaluation as a small table (`transform`: the index's, see `index_transform`)."""
    rows = [
        ("index", index_dir),
        ("transform", transform or "- (vectors as saved)"),
        ("queries evaluated", str(quality.num_queries)),
        ("skipped (no labels / no relevant)", f"{quality.skipped_unlabeled} / {quality.skipped_no_relevant}"),
        (f"precision@{quality.k}", f"{quality.precision_at_k:.4f}"),
        (f"mAP@{quality.k}", f"{quality.map_at_k:.4f}"),
        (f"chance precision@{quality.k}", f"{quality.chance_precision:.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.search",
        description="Nearest neighbours and retrieval quality over an index built by pipelines.index.",
    )
    parser.add_argument("--index", required=True, help="folder written by pipelines.index (local or gs://)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--id", help="neighbours of this indexed video")
    query.add_argument(
        "--query_parquet", help="scored Parquet file holding a query video (use with --query_id)"
    )
    query.add_argument("--evaluate", action="store_true", help="label-overlap precision@k and mAP@k")
    parser.add_argument("--query_id", help="the video of --query_parquet to search with")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--label_names", help="CSV `label_id,label_name` to show label names")
    parser.add_argument("--nprobe", type=int, help="IVF cells visited per query (default: the index's)")
    parser.add_argument(
        "--rerank", type=int, help="ivfpq: candidates per neighbour re-scored (default: the index's)"
    )
    parser.add_argument(
        "--queries", type=int, default=1000, help="--evaluate: sampled queries (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="--evaluate: sampling seed")
    parser.add_argument("--output", help="--evaluate: JSON file (default INDEX/retrieval_quality.json)")
    args = parser.parse_args(argv)
    if args.query_parquet and not args.query_id:
        parser.error("--query_parquet needs --query_id (the video to search with)")
    if args.query_id and not args.query_parquet:
        parser.error(
            "--query_id needs --query_parquet (the scored file holding it); for an indexed video use --id"
        )
    if args.k < 1:
        parser.error(f"-k must be at least 1, got {args.k}")
    return args


def _run(args: argparse.Namespace) -> None:
    index = load_index(args.index)
    if args.nprobe is not None:
        index.set_nprobe(args.nprobe)
    if args.rerank is not None:
        index.set_rerank(args.rerank)
    names = read_label_names(args.label_names) if args.label_names else None
    if args.evaluate:
        transform = index_transform(index.metadata, directory=args.index)
        quality = evaluate_retrieval(index, k=args.k, num_queries=args.queries, seed=args.seed)
        output = args.output or FileSystems.join(args.index, "retrieval_quality.json")
        report = {
            **quality.to_dict(),
            "index": args.index,
            "transform": transform,
            "seed": args.seed,
            "index_options": index.options.to_dict(),
        }
        write_bytes(output, json.dumps(report, indent=2).encode())
        print(format_quality(quality, index_dir=args.index, transform=transform))
        print(f"wrote {output}")
        return
    if args.id is not None:
        position = index.position(args.id)
        vector = index.vectors[position : position + 1]
        query_labels = index.labels[position]
        query_name = args.id
    else:
        embedding = read_query_embedding(args.query_parquet, args.query_id)
        vector = transform_embeddings(args.index, embedding)
        query_labels = None
        query_name = f"{args.query_id} (from {args.query_parquet})"
    # The query itself is left out when it is indexed: "similar to X" should not list X.
    query_id = args.id if args.id is not None else args.query_id
    own = index.position(query_id) if query_id in index else -1
    similarities, positions = search_excluding(index, vector, args.k, exclude=np.array([own]))
    print(
        format_neighbours(
            index,
            similarities[0],
            positions[0],
            query=query_name,
            query_labels=query_labels,
            label_names=names,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line message for bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        _run(args)
    except (RetrievalInputError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
