"""PCA + whitening + quantization as the dataset did, in the dataset's file layout."""

import numpy as np
import pytest

from nextvlad.extraction.pca import PCA, PCAError, load_pca_dir, save_pca_dir


def test_whitening_and_quantization_against_the_dataset_formula(tmp_path):
    rng = np.random.default_rng(1)
    dim, kept = 8, 4
    mean = rng.normal(size=dim).astype(np.float32)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    eigenvecs = basis.T.astype(np.float32)  # rows are the directions, as yt8m_pca/eigenvecs.npy
    eigenvals = np.array([4.0, 1.0, 0.25, 0.01, 0.0, 0.0, 0.0, 0.0], np.float32)
    np.save(tmp_path / "mean.npy", mean.reshape(-1, 1))
    np.save(tmp_path / "eigenvecs.npy", eigenvecs)
    np.save(tmp_path / "eigenvals.npy", eigenvals.reshape(-1, 1))
    pca = load_pca_dir(str(tmp_path), feature_dim=dim, output_dim=kept)

    x = rng.normal(size=(5, dim)).astype(np.float32)
    # The dataset's extractor: (x - mean) @ eigenvecs.T[:, :K] / sqrt(eigenvals[:K] + 1e-4)
    expected = (x - mean) @ eigenvecs.T[:, :kept] / np.sqrt(eigenvals[:kept] + 1e-4)
    np.testing.assert_allclose(pca.whiten(x), expected, rtol=1e-5, atol=1e-5)
    # Quantized over [-2, 2] with 255 steps: round((clip(y, -2, 2) + 2) * 63.75).
    q = pca.quantized(x)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, np.rint((np.clip(expected, -2, 2) + 2) * 63.75).astype(np.uint8))


def test_hand_computed_values():
    pca = PCA(
        np.array([1.0, 0.0], np.float32), np.eye(2, dtype=np.float32), np.array([3.9999, 0.0], np.float32)
    )
    y = pca.whiten(np.array([[3.0, 0.005]], np.float32))  # (3-1)/sqrt(4) = 1, 0.005/sqrt(1e-4) = 0.5
    np.testing.assert_allclose(y, [[1.0, 0.5]], rtol=1e-5)
    np.testing.assert_array_equal(
        pca.quantized([[3.0, 0.005]]), [[191, 159]]
    )  # rint(3*63.75), rint(2.5*63.75)


def test_saved_folder_reads_back_in_the_dataset_layout(tmp_path):
    rng = np.random.default_rng(2)
    pca = PCA(
        rng.normal(size=6).astype(np.float32),
        np.linalg.qr(rng.normal(size=(6, 6)))[0][:, :3].astype(np.float32),
        np.array([3.0, 2.0, 1.0], np.float32),
    )
    save_pca_dir(pca, str(tmp_path))
    assert np.load(tmp_path / "mean.npy").shape == (6, 1)
    assert np.load(tmp_path / "eigenvecs.npy").shape == (3, 6)  # one direction per row
    assert np.load(tmp_path / "eigenvals.npy").shape == (3, 1)
    again = load_pca_dir(str(tmp_path), feature_dim=6, output_dim=3)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_allclose(again.whiten(x), pca.whiten(x), rtol=1e-6)


def test_a_pca_for_other_features_is_refused_with_the_fix(tmp_path):
    save_pca_dir(
        PCA(np.zeros(6, np.float32), np.eye(6, dtype=np.float32)[:, :3], np.ones(3, np.float32)),
        str(tmp_path),
    )
    with pytest.raises(PCAError, match="another backbone; fit one with --fit_pca"):
        load_pca_dir(str(tmp_path), feature_dim=8, output_dim=3)
    with pytest.raises(PCAError, match=r"expected \(K >= 4, 6\)"):
        load_pca_dir(str(tmp_path), feature_dim=6, output_dim=4)
    with pytest.raises(PCAError, match="cannot read"):
        load_pca_dir(str(tmp_path / "nowhere"), feature_dim=6, output_dim=3)
