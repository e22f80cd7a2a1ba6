"""Segment-rated records for the segment tests, built from protos (not with the writers under test)."""

from __future__ import annotations

import tensorflow as tf
from scoring_data import _bytes, _floats, _ints


def rated_record(video_id: str, rgb, audio, ratings) -> bytes:
    """A frame-level SequenceExample with 2019 segment ratings `[(start, class, score), ...]`; its video
    labels are the rated classes."""
    context = {
        "id": _bytes(video_id.encode()),
        "labels": _ints(sorted({c for _, c, _ in ratings})),
        "segment_start_times": _ints([s for s, _, _ in ratings]),
        "segment_labels": _ints([c for _, c, _ in ratings]),
        "segment_scores": _floats([r for _, _, r in ratings]),
    }
    lists = {
        name: tf.train.FeatureList(feature=[_bytes(bytes(row)) for row in frames])
        for name, frames in (("rgb", rgb), ("audio", audio))
    }
    return tf.train.SequenceExample(
        context=tf.train.Features(feature=context), feature_lists=tf.train.FeatureLists(feature_list=lists)
    ).SerializeToString()
