"""Image backbones: seeded random Inception-v3, the offline error for ImageNet weights, .keras files."""

import numpy as np
import pytest
from extraction_helpers import tiny_backbone

from nextvlad.extraction.backbone import Backbone, BackboneError, BackboneSpec


def test_random_weights_are_reproducible_from_the_seed_and_said_so():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 75, 75, 3), dtype=np.uint8)
    spec = BackboneSpec(weights="none", seed=7, image_size=75)
    first = Backbone(spec, chunk_size=2)
    again = Backbone(spec, chunk_size=2)
    other = Backbone(BackboneSpec(weights="none", seed=8, image_size=75), chunk_size=2)
    features = first.features(images)
    assert features.shape == (3, 2048) and first.feature_dim == 2048 and first.image_size == (75, 75)
    np.testing.assert_allclose(again.features(images), features, rtol=1e-5, atol=1e-6)
    assert not np.allclose(other.features(images), features)
    # Chunking (the last chunk padded) does not change a frame's features.
    np.testing.assert_allclose(first.features(images[:1]), features[:1], rtol=1e-5, atol=1e-6)
    assert "seeded random weights (seed 7)" in spec.describe()["weights"]


def test_imagenet_weights_offline_fail_with_what_to_do(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(BackboneError) as error:
        Backbone(BackboneSpec(weights="imagenet", image_size=75))
    message = str(error.value)
    assert (
        "--weights none" in message and "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    )


def test_a_missing_weights_file_is_named():
    with pytest.raises(BackboneError, match="no such file"):
        Backbone(BackboneSpec(weights="/nowhere/weights.h5", image_size=75))


def test_a_keras_file_backbone_takes_its_own_input_size(tmp_path):
    backbone = Backbone(BackboneSpec(name=str(tiny_backbone(tmp_path / "tiny.keras"))))
    assert backbone.image_size == (32, 32) and backbone.feature_dim == 2048
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    np.testing.assert_allclose(backbone.features(white)[0, :16], 1.0, atol=1e-5)


def test_a_keras_hub_preset_folder_loads(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    # A tiny ResNet saved as a local preset: what a user does once on a machine with internet.
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(None, None, 3),
    )
    backbone.save_to_preset(str(tmp_path / "preset"))
    keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255.0).save_to_preset(
        str(tmp_path / "preset")
    )
    loaded = Backbone(BackboneSpec(name=str(tmp_path / "preset"), weights="imagenet"))
    assert loaded.image_size == (32, 32) and loaded.feature_dim == 64
    assert loaded.features(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 64)
