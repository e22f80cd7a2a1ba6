"""`pipelines.extract --fit_pca N`: learn the rgb PCA + whitening from the corpus with tensorflow-transform.

A Beam pass of its own, before extraction: a deterministic sample of the videos (those whose ids hash
lowest, about N / `FRAMES_PER_SAMPLED_VIDEO` of them) is decoded and run through the backbone, each
contributes evenly spaced frames until about N frames are collected, and the same tft analyzers as the
retrieval index (`pipelines.embedding_transform.pca_projection`: `tft.mean`, `tft.pca`, then `tft.var` of the
projections, which are the eigenvalues) learn μ, V and λ. They are read back by transforming one probe
row and written in the dataset's `yt8m_pca` layout (`nextvlad.extraction.pca.save_pca_dir`).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import numpy as np

from nextvlad.extraction.pca import PCA, save_pca_dir

logger = logging.getLogger(__name__)

FRAMES_PER_SAMPLED_VIDEO = 10  # sampled videos = ceil(N / this): many videos, a few frames each
_FEATURES = "embedding"  # the column name the retrieval index's analyzers use


def _preprocessing_fn(dim: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    import tensorflow as tf

    from pipelines.embedding_transform import pca_projection
    from pipelines.embeddings_io import import_tensorflow_transform

    tft = import_tensorflow_transform()

    def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, Any]:
        x = tf.cast(inputs[_FEATURES], tf.float64)  # [B, D]
        mean, components, projected = pca_projection(x, dim=dim)  # [D], [D, K], [B, K]
        variance = tft.var(projected, reduce_instance_dims=False, name="pca_variance")  # [K]
        rows = tf.shape(x)[:1]

        # tft outputs are per row: the learned constants are repeated on every (probe) row.
        def per_row(value: Any) -> Any:
            flat = tf.reshape(tf.cast(value, tf.float32), [1, -1])
            return tf.tile(flat, tf.concat([rows, [1]], axis=0))

        return {"mean": per_row(mean), "components": per_row(components), "eigenvals": per_row(variance)}

    return preprocessing_fn


class _WritePCAFn(beam.DoFn):
    def __init__(self, directory: str, feature_dim: int, dim: int) -> None:
        self._directory = directory
        self._feature_dim = feature_dim
        self._dim = dim

    def process(self, row: dict[str, Any]) -> Any:
        pca = PCA(
            mean=np.asarray(row["mean"], np.float32).reshape(self._feature_dim),
            components=np.asarray(row["components"], np.float32).reshape(self._feature_dim, self._dim),
            eigenvals=np.maximum(np.asarray(row["eigenvals"], np.float32).reshape(self._dim), 0.0),
        )
        yield from save_pca_dir(pca, self._directory)


def fit_pca(
    pipeline: beam.Pipeline,
    features: beam.PCollection,
    *,
    feature_dim: int,
    dim: int,
    output_dir: str,
    temp_dir: str | None = None,
) -> beam.PCollection:
    """Adds the tft analysis of `features` (float32 [D] arrays, one per frame) and the PCA files' writing.

    Args:
        pipeline: the pipeline `features` belongs to.
        features: frame features.
        feature_dim: D.
        dim: K, components kept.
        output_dir: folder that receives mean.npy, eigenvecs.npy and eigenvals.npy.
        temp_dir: tft's scratch folder (default: a local temporary folder).

    Returns:
        The paths written (a PCollection).
    """
    import tensorflow as tf

    from pipelines.embeddings_io import import_tensorflow_transform

    import_tensorflow_transform()  # keeps Keras 3: see pipelines.embeddings_io
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec({_FEATURES: tf.io.FixedLenFeature([feature_dim], tf.float32)})
    )
    rows = features | "ToRows" >> beam.Map(lambda x: {_FEATURES: np.asarray(x, np.float32)})
    probe = pipeline | "ProbeRow" >> beam.Create([{_FEATURES: np.zeros(feature_dim, np.float32)}])
    with tft_beam.Context(temp_dir=temp_dir or tempfile.mkdtemp(prefix="extract-pca-")):
        transform_fn = (rows, metadata) | "AnalyzePCA" >> tft_beam.AnalyzeDataset(_preprocessing_fn(dim))
        (learned, _) = ((probe, metadata), transform_fn) | "ReadLearned" >> tft_beam.TransformDataset()
    return learned | "WritePCA" >> beam.ParDo(_WritePCAFn(output_dir, feature_dim, dim))


def sampled_videos(num_frames: int, num_files: int) -> int:
    """How many videos the fit decodes: ceil(N / FRAMES_PER_SAMPLED_VIDEO), at most all of them."""
    return max(1, min(num_files, math.ceil(num_frames / FRAMES_PER_SAMPLED_VIDEO)))
