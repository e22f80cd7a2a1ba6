"""Retrieval index over pooled embeddings: a corpus-level transform learned with tensorflow-transform + faiss.

    python -m pipelines.index --embeddings 'runs/scores/run1-*.parquet' --output runs/index \\
        [--transform raw|pca|pca_power|whiten] [--dim 256] [--index_type flat|ivf|ivfpq] [--nlist N] \\
        [--nprobe N] [--pq_m M] [--rerank R] [--runner DirectRunner | DataflowRunner ...]

A Beam + tensorflow-transform job learns over the whole corpus whatever `--transform` needs — the mean
μ, the top-`dim` principal directions V (`tft.pca`) and the variance λ_j of the data along each
(`tft.var` of the projections; λ_j are the covariance's eigenvalues) — then maps every embedding x to
an L2-normalised vector, so that the inner product of two vectors is their cosine in that space:

    raw        v = normalize(x)                                  (no projection: dim = E)
    pca        v = normalize(p),               p = Vᵀ(x − μ)
    pca_power  v = normalize(sign(p) ⊙ √|p|)                     (power normalisation, α = ½)
    whiten     v = normalize(diag(λ + ε·max λ)^(-1/2) · p)       (Jégou & Chum, ECCV 2012)

The default (`DEFAULT_TRANSFORM`) is the one with the best label-overlap precision@10 on the model
embeddings in BENCHMARKS.md ("Retrieval index"); the others stay available. Written to `--output`:

- `transform_fn/`, `transformed_metadata/`: the learned function (`tft.TFTransformOutput(OUTPUT)`),
  which `pipelines.search` applies to query videos that are not in the index;
- `vectors-SSSSS-of-NNNNN.parquet`: `id`, `labels`, `model_version`, `vector` (fixed_size_list<float>[dim]);
- `index.faiss` + `ids.parquet` (row i = index position i) + `index.json` (dims, counts, transform,
  options, source files, model versions, timings). The faiss index is built on the launching machine
  from the written vectors (N × dim float32 must fit in its memory: 1M × 256 is 1 GB, 1M × 2048 raw
  vectors 8 GB).

Index types: `flat` (default, exact inner product), `ivf` (inverted lists; `--nprobe` of `--nlist`
cells are searched) and `ivfpq` (IVF with product-quantised codes, `--pq_m` bytes per vector, whose
best `--rerank`·k candidates are re-scored exactly). BENCHMARKS.md has speed and recall at one
million vectors. Search with `python -m pipelines.search --index OUTPUT --id VIDEO_ID`.

Any Beam option is passed through (`--runner`, `--temp_location`, ...); `deploy/index_dataflow.sh`
runs this on Dataflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from nextvlad.files import is_remote
from pipelines.embedding_transform import TRANSFORM_DIR, TRANSFORMS, make_preprocessing_fn
from pipelines.embeddings_io import (
    ID_COLUMN,
    LABELS_COLUMN,
    MODEL_VERSION_COLUMN,
    PASSTHROUGH_KEYS,
    VECTOR_COLUMN,
    VECTORS_PREFIX,
    EmbeddingSource,
    ReadEmbeddings,
    RetrievalInputError,
    WriteVectors,
    import_tensorflow_transform,
    inspect_embeddings,
    read_tables,
    tensor_adapter_config,
)
from pipelines.retrieval_index import INDEX_TYPES, build_index, resolve_index_options, save_index

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TRANSFORM",
    "IndexConfig",
    "index_embeddings",
    "main",
    "parse_known_args",
    "run",
]

DEFAULT_DIM = 256
# The measured default (BENCHMARKS.md, "Retrieval index"): on the embeddings of a `video` model, PCA to
# 256 retrieved best (precision@10 0.748 vs 0.742 raw cosine, 0.718 pca_power, 0.693 whiten on the
# held-out YouTube-8M files) and ties the best on the demo model's NeXtVLAD embeddings, where whitening
# lost 0.065. Whitening helps only raw mean-pooled synthetic frames.
DEFAULT_TRANSFORM = "pca"
_DEFAULT_TRANSFORM_WHY = (
    "best label-overlap precision@10 on model embeddings in BENCHMARKS.md; whitening lowered it there"
)


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Everything `pipelines.index` needs besides the Beam options."""

    embeddings: str  # glob of scored Parquet files (local or gs://)
    output: str  # folder for transform_fn/, vectors-*.parquet, index.faiss, ids.parquet, index.json
    dim: int | None = None  # PCA output size; None: min(256, E, rows − 1); raw: always E
    transform: str = DEFAULT_TRANSFORM  # a key of pipelines.embedding_transform.TRANSFORMS
    whiten_epsilon: float = 1e-6  # whiten: added to each variance, relative to the largest (caps the gain)
    index_type: str = "flat"  # flat | ivf | ivfpq (see pipelines.retrieval_index.IndexOptions)
    nlist: int | None = None  # IVF cells; None: ≈ 4·√N
    nprobe: int | None = None  # IVF cells searched per query; None: max(nlist/64, min(nlist, 32))
    pq_m: int | None = None  # ivfpq bytes per vector; None: dim / 4
    rerank: int | None = None  # ivfpq candidates per neighbour re-scored exactly; None: 10
    keep_projected: bool = False  # also write the PCA coordinates before L2 (`projected` column)
    num_shards: int = 0  # vectors-*.parquet shards; 0 lets the runner decide


def _resolve_dim(config: IndexConfig, source: EmbeddingSource) -> int:
    if config.transform == "raw":
        if config.dim is not None and config.dim != source.embedding_dim:
            logger.warning(
                "--dim %d is ignored with --transform raw: its vectors keep all %d values of the embedding",
                config.dim,
                source.embedding_dim,
            )
        return source.embedding_dim
    limit = source.num_rows - 1  # centred data of N rows spans at most N − 1 directions
    if config.dim is None:
        dim = min(DEFAULT_DIM, source.embedding_dim, limit)
        if dim < 1:
            raise RetrievalInputError(
                f"{source.pattern} holds {source.num_rows} row(s); an index needs at least 2"
            )
        return dim
    if config.dim < 1:
        raise RetrievalInputError(f"--dim must be at least 1, got {config.dim}")
    if config.dim > source.embedding_dim:
        raise RetrievalInputError(
            f"--dim {config.dim} is larger than the embedding length {source.embedding_dim} of "
            f"{source.pattern}; pass --dim {source.embedding_dim} or less"
        )
    if config.dim > limit:
        raise RetrievalInputError(
            f"--dim {config.dim} is larger than the number of rows allows: {source.num_rows} rows of "
            f"{source.pattern} span at most {limit} directions once centred; pass --dim {max(limit, 1)} or "
            "less, or index more videos"
        )
    return config.dim


def _original_input_error(error: RetrievalInputError) -> RetrievalInputError:
    """The input error as the DoFn raised it, from the one the runner re-raised.

    Beam re-raises a DoFn's exception as a new one of the same type whose message also names the step
    (`... [while running 'ReadEmbeddings/ToRecordBatch']`), chained to the original; the innermost
    `RetrievalInputError` of the chain carries the message meant for the user. (A remote runner reports
    the failure its own way, quoting the same message.)
    """
    original, seen = error, set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, RetrievalInputError):
            original = current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return original


class _DropCacheKeyWarning(logging.Filter):
    """tft warns that a second-phase analyzer's cache key "varies on repeated tracing" and that this is
    safe when every analyzer is named, as ours are; the warning would only alarm users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "cache key varies on repeated tracing" not in record.getMessage()


def _delete_folder(path: str) -> None:
    """Removes tft's temporary folder (on GCS, everything under `path/`)."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        FileSystems.delete([path.rstrip("/") + "/"])
    except BeamIOError as error:  # nothing there
        logger.debug("no temporary folder to remove at %s: %s", path, error)


def _delete_matching(pattern: str) -> None:
    stale = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if stale:
        logger.warning("replacing %d file(s) matching %s", len(stale), pattern)
        FileSystems.delete(stale)


def _transform(config: IndexConfig, source: EmbeddingSource, *, dim: int, pipeline: beam.Pipeline) -> None:
    """Runs the tft job on `pipeline`: learns the transform over the corpus, writes it and the vectors."""
    import_tensorflow_transform()
    import tensorflow_transform.beam as tft_beam

    preprocessing_fn = make_preprocessing_fn(
        dim=dim,
        transform=config.transform,
        epsilon=config.whiten_epsilon,
        keep_projected=config.keep_projected,
    )
    temp_dir = FileSystems.join(config.output, "tmp")
    cache_key_filter = _DropCacheKeyWarning()
    logging.getLogger("absl").addFilter(cache_key_filter)
    try:
        with pipeline as p, tft_beam.Context(temp_dir=temp_dir, passthrough_keys=set(PASSTHROUGH_KEYS)):
            batches = p | "ReadEmbeddings" >> ReadEmbeddings(source)
            (transformed, _), transform_fn = (
                batches,
                tensor_adapter_config(source.embedding_dim),
            ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                preprocessing_fn, output_record_batches=True
            )
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(config.output)
            _ = transformed | "WriteVectors" >> WriteVectors(
                config.output, dim=dim, keep_projected=config.keep_projected, num_shards=config.num_shards
            )
    except RetrievalInputError as error:  # a bad row, found while the pipeline read it
        raise _original_input_error(error) from None
    finally:
        logging.getLogger("absl").removeFilter(cache_key_filter)
    _delete_folder(temp_dir)


def index_embeddings(
    config: IndexConfig,
    *,
    options: PipelineOptions | None = None,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any]:
    """Runs the whole job: checks the input, runs the tft pipeline, builds and writes the faiss index.

    Args:
        config: input, output and index settings.
        options: Beam pipeline options (runner etc.); DirectRunner when None.
        test_pipeline: a pipeline to build on instead of a new one (it is run here).

    Returns:
        The content of `OUTPUT/index.json`.

    Raises:
        RetrievalInputError: unusable input or options (checked before any work is submitted where the
            footers suffice; rows whose embedding length differs fail the pipeline with this error).
    """
    start = time.perf_counter()
    if config.transform not in TRANSFORMS:
        raise RetrievalInputError(f"--transform {config.transform!r} is not one of {list(TRANSFORMS)}")
    source = inspect_embeddings(config.embeddings)
    dim = _resolve_dim(config, source)
    # Fail on impossible index options now rather than after the pipeline has run.
    resolve_index_options(
        source.num_rows,
        dim,
        index_type=config.index_type,
        nlist=config.nlist,
        nprobe=config.nprobe,
        pq_m=config.pq_m,
        rerank=config.rerank,
    )
    logger.info(
        "indexing %d rows of %d-d embeddings from %d file(s) → %d-d, transform %s",
        source.num_rows,
        source.embedding_dim,
        len(source.files),
        dim,
        config.transform,
    )
    vectors_pattern = FileSystems.join(config.output, f"{VECTORS_PREFIX}-*.parquet")
    _delete_matching(vectors_pattern)
    options = options or PipelineOptions()
    _transform(
        config,
        source,
        dim=dim,
        pipeline=test_pipeline if test_pipeline is not None else beam.Pipeline(options=options),
    )
    transform_seconds = time.perf_counter() - start

    index_start = time.perf_counter()
    table = read_tables(vectors_pattern)
    vectors = table.column(VECTOR_COLUMN).combine_chunks().flatten().to_numpy().reshape(-1, dim)  # [N, dim]
    if len(table) != source.num_rows:
        logger.warning("read %d rows but wrote %d vectors", source.num_rows, len(table))
    index = build_index(
        vectors,
        ids=table.column(ID_COLUMN).to_pylist(),
        labels=table.column(LABELS_COLUMN).to_pylist(),
        index_type=config.index_type,
        nlist=config.nlist,
        nprobe=config.nprobe,
        pq_m=config.pq_m,
        rerank=config.rerank,
    )
    index_seconds = time.perf_counter() - index_start
    versions = sorted({v for v in table.column(MODEL_VERSION_COLUMN).to_pylist() if v is not None})
    metadata = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": {"embeddings": source.pattern, "files": list(source.files), "num_rows": source.num_rows},
        "model_versions": versions,
        "embedding_dim": source.embedding_dim,
        "transform": config.transform,
        "transform_definition": TRANSFORMS[config.transform],
        # Kept for readers of indexes from before --transform (true only for the whiten transform).
        "whiten": config.transform == "whiten",
        "whiten_epsilon": config.whiten_epsilon,
        "transform_fn": f"{TRANSFORM_DIR}/ (tft.TFTransformOutput(this folder): `embedding` → `vector`)",
        "vectors": f"{VECTORS_PREFIX}-*.parquet",
        "runner": str(options.view_as(StandardOptions).runner or "DirectRunner"),
        "timings_s": {
            "transform": round(transform_seconds, 3),
            "index": round(index_seconds, 3),
            "total": round(time.perf_counter() - start, 3),
        },
    }
    return save_index(index, config.output, metadata=metadata)


def parse_known_args(argv: Sequence[str] | None = None) -> tuple[IndexConfig, list[str]]:
    """This job's flags → `IndexConfig`; everything else is returned for Beam's `PipelineOptions`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.index",
        description="Map scored embeddings to index vectors with tensorflow-transform (--transform); "
        "build a nearest-neighbour index",
        epilog="transforms (--transform):\n"
        + "\n".join(f"  {name:<10} {definition}" for name, definition in TRANSFORMS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--embeddings", required=True, help="glob of scored Parquet files (quote it)")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    parser.add_argument(
        "--transform",
        choices=tuple(TRANSFORMS),
        help=f"embedding → vector map, defined below (default {DEFAULT_TRANSFORM}: {_DEFAULT_TRANSFORM_WHY})",
    )
    parser.add_argument(
        "--dim",
        type=int,
        help=f"PCA output size (default {DEFAULT_DIM}, capped by E and rows − 1; raw: always E)",
    )
    parser.add_argument(
        "--whiten",
        action=argparse.BooleanOptionalAction,
        help="deprecated: --whiten is --transform whiten, --no-whiten is --transform pca",
    )
    parser.add_argument(
        "--whiten_epsilon",
        type=float,
        default=1e-6,
        help="whiten: variance regulariser, relative to the largest (1e-6)",
    )
    parser.add_argument(
        "--index_type", choices=INDEX_TYPES, default="flat", help="flat (exact, default), ivf, ivfpq"
    )
    parser.add_argument("--nlist", type=int, help="IVF cells (default ≈ 4·√N)")
    parser.add_argument(
        "--nprobe", type=int, help="IVF cells searched per query (default max(nlist/64, min(nlist, 32)))"
    )
    parser.add_argument("--pq_m", type=int, help="ivfpq bytes per vector; divides --dim (default dim/4)")
    parser.add_argument("--rerank", type=int, help="ivfpq candidates per neighbour re-scored exactly (10)")
    parser.add_argument(
        "--keep_projected", action="store_true", help="also write the PCA coordinates before L2 (`projected`)"
    )
    parser.add_argument(
        "--num_shards", type=int, default=0, help="vectors-*.parquet shards (0: runner decides)"
    )
    args, beam_args = parser.parse_known_args(argv)
    if args.whiten is not None:
        implied = "whiten" if args.whiten else "pca"
        flag = "--whiten" if args.whiten else "--no-whiten"
        if args.transform not in (None, implied):
            parser.error(f"{flag} (= --transform {implied}) contradicts --transform {args.transform}")
        logger.warning("%s is deprecated: pass --transform %s", flag, implied)
        args.transform = implied
    if args.transform is None:
        args.transform = DEFAULT_TRANSFORM
    config = IndexConfig(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(IndexConfig)}
    )
    return config, beam_args


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict[str, Any]:
    """Parses `argv` (this job's flags and Beam's) and runs `index_embeddings`; returns `index.json`."""
    config, beam_args = parse_known_args(argv)
    return index_embeddings(config, options=PipelineOptions(beam_args), test_pipeline=test_pipeline)


class _DropInputErrorTracebacks(logging.Filter):
    """Beam logs a DoFn's exception with its traceback before re-raising it; for bad input the CLI's
    one-line message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], RetrievalInputError))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line message for bad input)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipelines").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropInputErrorTracebacks())
    config, beam_args = parse_known_args(argv)
    try:
        metadata = index_embeddings(config, options=PipelineOptions(beam_args))
    except RetrievalInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = metadata["index"]
    knobs = "".join(
        f", {key} {options[key]}" for key in ("nlist", "nprobe", "pq_m", "rerank") if options[key]
    )
    print(
        f"indexed {metadata['num_vectors']} videos: {metadata['embedding_dim']}-d embeddings → "
        f"{metadata['dim']}-d vectors ({metadata['transform']}), "
        f"{options['index_type']} index{knobs}, in {metadata['timings_s']['total']:.1f} s → {config.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
