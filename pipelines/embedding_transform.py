"""How the retrieval index maps a model embedding to an index vector, learned with tensorflow-transform.

`make_preprocessing_fn` is the tft `preprocessing_fn` of `pipelines.index` (one of `TRANSFORMS`, then L2
normalisation); the job saves the learned function in `INDEX/transform_fn/`, and `transform_embeddings`
applies it to query embeddings so that they land in the indexed vectors' space. TensorFlow and
tensorflow-transform are imported only when a function here needs them (see
`pipelines.embeddings_io.import_tensorflow_transform`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from apache_beam.io.filesystems import FileSystems

from nextvlad.files import read_bytes
from pipelines.embeddings_io import EMBEDDING_COLUMN, RetrievalInputError, import_tensorflow_transform
from pipelines.retrieval_index import METADATA_FILE

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

# How `pipelines.index` maps an embedding x to an index vector (μ, V: corpus mean and top principal
# directions; λ: the variance along each). The saved tensorflow-transform function applies the same map
# to query embeddings; `index.json` names it under "transform".
TRANSFORMS = {
    "whiten": "PCA to --dim, each component divided by its std, L2: normalize(diag(λ)^-½·p), p = Vᵀ(x − μ)",
    "pca": "PCA to --dim, L2 (no whitening): normalize(p), p = Vᵀ(x − μ)",
    "pca_power": "PCA to --dim, signed square root of each coordinate, L2: normalize(sign(p)·√|p|)",
    "raw": "L2 only (no centring, no projection; --dim does not apply): normalize(x)",
}
TRANSFORM_DIR = "transform_fn"
VECTOR_COLUMN = "vector"
PROJECTED_COLUMN = "projected"


def pca_projection(x: tf.Tensor, *, dim: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """tft analyzers for a corpus PCA: the mean μ [E], the top-`dim` principal directions V [E, dim]
    (decreasing variance) and the projections `(x − μ) V` [B, dim] of float64 `x` [B, E]."""
    tft = import_tensorflow_transform()  # before TensorFlow: it decides which Keras tf.keras is
    import tensorflow as tf

    mean = tft.mean(x, reduce_instance_dims=False, name="embedding_mean")  # [E]
    components = tft.pca(x, output_dim=dim, dtype=tf.float64, name="pca")  # [E, dim]
    return mean, components, tf.matmul(x - mean, components)


def make_preprocessing_fn(
    *, dim: int, transform: str, epsilon: float = 1e-6, keep_projected: bool = False
) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
    """The tensorflow-transform `preprocessing_fn`: one of `TRANSFORMS`, then L2 normalisation.

    Args:
        dim: number of principal components kept (ignored by `raw`, whose vectors keep all E values).
        transform: `raw` (L2 only), `pca` (centre, project on the top `dim` principal directions),
            `pca_power` (`pca`, then the signed square root of each coordinate) or `whiten` (`pca`,
            then each component divided by √(λ_j + ε·max λ), λ_j its variance over the corpus).
        epsilon: the whitening regulariser ε, relative to the largest variance.
        keep_projected: also output `projected`, the coordinates just before L2 normalisation.

    Returns:
        A pure function from `{"embedding": [B, E] float32}` to `{"vector": [B, dim] float32}` (plus
        `projected` when asked).
    """
    if transform not in TRANSFORMS:
        raise RetrievalInputError(f"--transform {transform!r} is not one of {list(TRANSFORMS)}")
    tft = import_tensorflow_transform()  # before TensorFlow: it decides which Keras tf.keras is
    import tensorflow as tf

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # float64 throughout: the covariance is accumulated as E[xxᵀ] − μμᵀ, which loses digits when
        # the mean is large compared with the spread.
        x = tf.cast(inputs[EMBEDDING_COLUMN], tf.float64)  # [B, E]
        if transform == "raw":
            projected = x  # [B, E]
        else:
            _, _, projected = pca_projection(x, dim=dim)  # [B, dim]
        if transform == "whiten":
            # The variance along an eigenvector is its eigenvalue; tft.pca does not return those, so a
            # second pass measures them on the projections.
            variance = tft.var(projected, reduce_instance_dims=False, name="pca_variance")  # [dim]
            projected = projected / tf.sqrt(variance + epsilon * tf.reduce_max(variance))  # [B, dim]
        elif transform == "pca_power":
            # Power normalisation (α = ½) shrinks the dominant components' share of the cosine without
            # equalising them: a softer whitening that needs no variance estimate. Scale-free under L2.
            projected = tf.sign(projected) * tf.sqrt(tf.abs(projected))  # [B, dim]
        outputs = {VECTOR_COLUMN: tf.cast(tf.math.l2_normalize(projected, axis=1), tf.float32)}
        if keep_projected:
            outputs[PROJECTED_COLUMN] = tf.cast(projected, tf.float32)
        return outputs

    return preprocessing_fn


def index_transform(metadata: Mapping[str, Any], *, directory: str = "the index") -> str | None:
    """The name of the transform (a key of `TRANSFORMS`) that made an index's vectors, from `index.json`.

    Indexes written before `--transform` existed record only `"whiten": true | false`, which are the
    `whiten` and `pca` transforms. None for an index saved from Python without `pipelines.index` (its
    vectors are in whatever space the caller built them).

    Raises:
        RetrievalInputError: the index names a transform this version does not know.
    """
    if "transform" in metadata:
        transform = metadata["transform"]
        if transform not in TRANSFORMS:
            raise RetrievalInputError(
                f"{directory} was built with --transform {transform!r}, which this version does not know "
                f"(known: {', '.join(TRANSFORMS)}); rebuild it with pipelines.index or upgrade"
            )
        return transform
    if "whiten" in metadata:
        return "whiten" if metadata["whiten"] else "pca"
    return None


def transform_embeddings(index_dir: str, embeddings: np.ndarray) -> np.ndarray:
    """Applies the index's saved tensorflow-transform function (its `--transform`, then L2) to embeddings.

    Args:
        index_dir: folder written by `pipelines.index` (holds `transform_fn/`).
        embeddings: `[Q, E]` (or `[E]`) model embeddings, as in the scored Parquet's `embedding`.

    Returns:
        `[Q, d]` float32 vectors, comparable with the indexed ones.
    """
    tft = import_tensorflow_transform()  # before TensorFlow: it decides which Keras tf.keras is
    import tensorflow as tf

    embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))  # [Q, E]
    metadata = json.loads(read_bytes(FileSystems.join(index_dir, METADATA_FILE)))
    if "embedding_dim" not in metadata or not FileSystems.exists(FileSystems.join(index_dir, TRANSFORM_DIR)):
        raise RetrievalInputError(
            f"the index at {index_dir} has no {TRANSFORM_DIR}/ (it was not built by pipelines.index); "
            "search it with vectors in its own space (--id, or search() from Python)"
        )
    transform = index_transform(metadata, directory=index_dir)
    logger.info("query embeddings → the index's %s transform (%s)", transform, TRANSFORMS[transform])
    expected = metadata["embedding_dim"]
    if embeddings.shape[1] != expected:
        raise RetrievalInputError(
            f"the query embedding has length {embeddings.shape[1]}, the index was built from length "
            f"{expected}; score the query with the same model"
        )
    output = tft.TFTransformOutput(index_dir)
    transformed = output.transform_raw_features({EMBEDDING_COLUMN: tf.constant(embeddings)})
    return transformed[VECTOR_COLUMN].numpy().astype(np.float32)
