"""YouTube-8M's PCA + whitening of image features, in the dataset's file layout.

The dataset projected each 2048-d Inception frame feature x onto its top 1024 principal directions
and whitened it: `y = Vᵀ (x − μ) / √(λ + 1e-4)`, then quantized y to uint8 over [-2, 2]. Its published
`yt8m_pca` folder holds `mean.npy` (2048, 1), `eigenvecs.npy` (components as rows: the extractor uses
`eigenvecs.T[:, :1024]`) and `eigenvals.npy` (2048, 1). `load_pca_dir` reads that layout (more rows than
needed are fine) and `save_pca_dir` writes it, so a folder this project fits is read the same way, also by
`trainer.train --pca_eigenvals`.
"""

from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np

from nextvlad.files import read_bytes, write_bytes
from nextvlad.records import RGB_SIZE, quantize

logger = logging.getLogger(__name__)

PCA_FILES = ("mean.npy", "eigenvecs.npy", "eigenvals.npy")
WHITENING_EPSILON = 1e-4  # added to each eigenvalue before the square root, as the dataset's extractor
DATASET_PCA_URL = "http://data.yt8m.org/yt8m_pca.tgz"


class PCAError(ValueError):
    """PCA files that cannot be used with these features; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class PCA:
    """A fitted projection: D-dimensional features → K whitened components."""

    mean: np.ndarray  # float32 [D]
    components: np.ndarray  # float32 [D, K]: column k is the k-th principal direction
    eigenvals: np.ndarray  # float32 [K]: variance of the features along each direction

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[1])

    def whiten(self, features: np.ndarray) -> np.ndarray:
        """float32 [N, D] → float32 [N, K]: `(x − μ) V / √(λ + 1e-4)`."""
        x = np.asarray(features, dtype=np.float32) - self.mean
        return (x @ self.components) / np.sqrt(self.eigenvals + np.float32(WHITENING_EPSILON))

    def quantized(self, features: np.ndarray) -> np.ndarray:
        """uint8 [N, K]: whitened, then quantized over [-2, 2] as the dataset did."""
        return quantize(self.whiten(features))


def _load(path: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PCAError(f"cannot read {path!r} ({type(e).__name__}: {e})") from None


def load_pca_dir(directory: str, *, feature_dim: int, output_dim: int = RGB_SIZE) -> PCA:
    """Reads `mean.npy`, `eigenvecs.npy` and `eigenvals.npy` from a folder (local or gs://).

    Args:
        directory: the folder (the dataset's `yt8m_pca`, or one `pipelines.extract --fit_pca` wrote).
        feature_dim: D, the backbone's feature size the PCA must take.
        output_dim: K, components kept (1024 for rgb).

    Raises:
        PCAError: a file is missing, or its shape does not fit D and K.
    """
    directory = directory.rstrip("/")
    mean, vecs, vals = (_load(f"{directory}/{name}") for name in PCA_FILES)
    mean = mean.reshape(-1).astype(np.float32)
    vals = vals.reshape(-1).astype(np.float32)
    if mean.shape != (feature_dim,):
        raise PCAError(
            f"{directory}/mean.npy has {mean.size} values but the backbone gives {feature_dim}-d features: "
            "this PCA belongs to another backbone; fit one with --fit_pca N"
        )
    if vecs.ndim != 2 or vecs.shape[1] != feature_dim or vecs.shape[0] < output_dim:
        raise PCAError(
            f"{directory}/eigenvecs.npy has shape {vecs.shape}; expected (K >= {output_dim}, {feature_dim}) "
            "with one principal direction per row, as the dataset's yt8m_pca/eigenvecs.npy"
        )
    if vals.size < output_dim or not np.all(np.isfinite(vals)) or np.any(vals < 0):
        raise PCAError(
            f"{directory}/eigenvals.npy must hold at least {output_dim} finite, non-negative eigenvalues "
            f"(has {vals.size})"
        )
    return PCA(
        mean=mean,
        components=np.ascontiguousarray(vecs[:output_dim].T.astype(np.float32)),
        eigenvals=vals[:output_dim],
    )


def save_pca_dir(pca: PCA, directory: str) -> list[str]:
    """Writes `pca` in the dataset's layout (local or gs://); returns the paths written."""
    directory = directory.rstrip("/")
    arrays = {
        "mean.npy": pca.mean.reshape(-1, 1).astype(np.float32),
        "eigenvecs.npy": np.ascontiguousarray(pca.components.T.astype(np.float32)),  # [K, D], rows
        "eigenvals.npy": pca.eigenvals.reshape(-1, 1).astype(np.float32),
    }
    paths = []
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        write_bytes(f"{directory}/{name}", buffer.getvalue())
        paths.append(f"{directory}/{name}")
    return paths
