"""The scoring pipeline's transforms: read, parse, batch by length, score, write rows and dead letters.

`build_pipeline` adds them to a pipeline for arguments that `pipelines.score_arguments` has checked;
`pipelines.score` runs it. The module docstring of `pipelines.score` draws the graph.
"""

from __future__ import annotations

import argparse
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from pipelines.handler import ModelInfo, NeXtVLADModelHandler, SegmentOptions
from pipelines.parquet_sink import SEGMENTS_INFIX, WriteParquet, segment_schema
from pipelines.transforms import (
    DEAD_LETTER,
    BucketByLength,
    FormatRows,
    FormatSegmentRows,
    ParseRecords,
    ReadRecords,
    RowDicts,
    WriteDeadLetter,
)


def build_pipeline(
    pipeline: beam.Pipeline,
    args: argparse.Namespace,
    info: ModelInfo,
    *,
    model_version: str,
    bigquery_test_client: Any = None,
) -> None:
    """Adds the scoring transforms to `pipeline` (arguments already checked by `run`).

    Args:
        pipeline: the pipeline to extend.
        args: parsed arguments (see `parse_known_args`), with defaults resolved.
        info: the model, from `pipelines.handler.inspect_model`.
        model_version: written into every row.
        bigquery_test_client: a Beam BigQuery client to use instead of the default (tests).
    """
    level = args.input_format.capitalize()
    read = pipeline | f"Read{level}Records" >> ReadRecords(
        args.input, skip_corrupt_files=args.skip_corrupt_files
    )
    records = read.records
    if args.reshuffle:
        records = records | "ReshuffleRecords" >> beam.Reshuffle()
    parsed = records | "ParseRecords" >> ParseRecords(
        input_format=args.input_format,
        num_classes=info.num_classes,
        max_frames=info.max_frames,
    )
    handler = NeXtVLADModelHandler(
        info.path,
        input_format=args.input_format,
        batch_size=args.batch_size,
        precision=args.precision,
        share_model_across_processes=args.share_model or args.model_copies is not None,
        model_copies=args.model_copies,
        pad_lengths=args.length_buckets or (),
        segments=_segment_options(args),
    )
    examples = parsed.examples
    if args.length_buckets:
        examples = examples | "BucketByLength" >> BucketByLength(
            args.length_buckets, batch_size=args.batch_size
        )
    scored = examples | "RunInference" >> RunInference(handler)
    rows = scored | "FormatRows" >> FormatRows(
        top_k=args.top_k, model_version=model_version, embedding_size=info.embedding_size
    )
    if args.segments:
        _write_segments(scored, args, info, bigquery_test_client=bigquery_test_client)
    if "parquet" in args.output_format:
        rows | "WriteParquet" >> WriteParquet(
            args.output, embedding_size=info.embedding_size, num_shards=args.num_shards
        )
    if "bigquery" in args.output_format:
        from pipelines.bigquery import WriteRowsToBigQuery

        (
            rows
            | "RowDicts" >> RowDicts()
            | "WriteBigQuery"
            >> WriteRowsToBigQuery(
                args.bigquery_table,
                method=args.bigquery_method,
                custom_gcs_temp_location=args.bigquery_temp_location,
                test_client=bigquery_test_client,
            )
        )
    (
        (read[DEAD_LETTER], parsed[DEAD_LETTER])
        | "CollectDeadLetters" >> beam.Flatten()
        | "WriteDeadLetter" >> WriteDeadLetter(args.output)
    )


def _segment_options(args: argparse.Namespace) -> SegmentOptions | None:
    if not args.segments:
        return None
    return SegmentOptions(
        length=args.segment_length,
        stride=args.segment_stride,
        top_k=args.segment_top_k,
        classes=getattr(args, "segment_class_ids", ()),
        embeddings=args.segment_embeddings,
        batch_size=args.segment_batch_size,
    )


def _write_segments(
    scored: beam.PCollection, args: argparse.Namespace, info: ModelInfo, *, bigquery_test_client: Any
) -> None:
    """Segment rows to `{output}_segments-*.parquet` and, with BigQuery, to the table `{TABLE}_segments`."""
    embedding_size = info.embedding_size if args.segment_embeddings else None
    rows = scored | "FormatSegmentRows" >> FormatSegmentRows(embedding_size=embedding_size)
    if "parquet" in args.output_format:
        rows | "WriteSegmentParquet" >> WriteParquet(
            f"{args.output}{SEGMENTS_INFIX}",
            embedding_size=info.embedding_size,
            schema=segment_schema(embedding_size),
            num_shards=args.num_shards,
        )
    if "bigquery" in args.output_format:
        from pipelines.bigquery import WriteRowsToBigQuery, segments_table

        (
            rows
            | "SegmentRowDicts" >> RowDicts()
            | "WriteSegmentBigQuery"
            >> WriteRowsToBigQuery(
                segments_table(args.bigquery_table),
                method=args.bigquery_method,
                custom_gcs_temp_location=args.bigquery_temp_location,
                test_client=bigquery_test_client,
                segments=True,
            )
        )
