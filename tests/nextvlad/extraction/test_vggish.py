"""VGGish: a checkpoint in the published layout loads, and the Keras network computes what the release's
TF-slim graph computes; the PCA post-processor matches its definition."""

import numpy as np
import pytest
from extraction_helpers import write_vggish_checkpoint

from nextvlad.extraction.vggish import VGGishError, VGGishPCA, load_vggish


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("vggish") / "vggish_model.ckpt"
    return prefix, write_vggish_checkpoint(prefix)


def _slim_reference(values, patches):
    """vggish_slim.py's graph with plain TensorFlow ops."""
    import tensorflow as tf

    x = tf.reshape(tf.constant(patches), [-1, 96, 64, 1])
    for scope in ("conv1", "conv2", "conv3/conv3_1", "conv3/conv3_2", "conv4/conv4_1", "conv4/conv4_2"):
        w, b = values[f"vggish/{scope}/weights"], values[f"vggish/{scope}/biases"]
        x = tf.nn.relu(tf.nn.conv2d(x, w, strides=1, padding="SAME") + b)
        if scope in ("conv1", "conv2", "conv3/conv3_2", "conv4/conv4_2"):
            x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")
    x = tf.reshape(x, [-1, 12288])
    for scope in ("fc1/fc1_1", "fc1/fc1_2"):
        x = tf.nn.relu(x @ values[f"vggish/{scope}/weights"] + values[f"vggish/{scope}/biases"])
    return (x @ values["vggish/fc2/weights"] + values["vggish/fc2/biases"]).numpy()


def test_published_checkpoint_layout_loads_and_runs_like_the_slim_graph(checkpoint):
    prefix, values = checkpoint
    model = load_vggish(str(prefix))
    patches = np.random.default_rng(1).normal(-2, 1, size=(3, 96, 64)).astype(np.float32)
    embeddings = np.asarray(model.predict_on_batch(patches))
    assert embeddings.shape == (3, 128)
    np.testing.assert_allclose(embeddings, _slim_reference(values, patches), rtol=1e-3, atol=1e-3)


def test_a_checkpoint_missing_a_variable_is_refused(tmp_path):
    prefix = tmp_path / "partial.ckpt"
    write_vggish_checkpoint(prefix, scopes=("vggish/conv1",))
    with pytest.raises(VGGishError, match="has no variable 'vggish/conv2/weights'"):
        load_vggish(str(prefix))


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "x.ckpt").write_text("not a checkpoint")
    with pytest.raises(VGGishError, match="vggish_model.ckpt"):
        load_vggish(str(tmp_path / "x.ckpt"))


def test_pca_post_processing_is_the_release_formula(tmp_path):
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(128, 128)).astype(np.float32)
    means = rng.normal(size=(128, 1)).astype(np.float32)
    np.savez(tmp_path / "vggish_pca_params.npz", pca_eigen_vectors=matrix, pca_means=means)
    embeddings = rng.normal(size=(4, 128)).astype(np.float32)
    # vggish_postprocess.py: np.dot(pca_matrix, (embeddings.T - pca_means)).T
    expected = np.dot(matrix, (embeddings.T - means)).T
    np.testing.assert_allclose(
        VGGishPCA(str(tmp_path / "vggish_pca_params.npz"))(embeddings), expected, rtol=1e-4, atol=1e-4
    )
    np.savez(tmp_path / "bad.npz", pca_eigen_vectors=matrix[:64])
    with pytest.raises(VGGishError, match="vggish_pca_params.npz"):
        VGGishPCA(str(tmp_path / "bad.npz"))
