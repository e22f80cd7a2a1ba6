"""NeXtVLADModelHandler: per-batch padding, numpy outputs equal to model.predict, model checks, options."""

import keras
import numpy as np
import pytest
from scoring_data import (
    HIDDEN_SIZE,
    NUM_CLASSES,
    decode_frame_record,
    good_frame_records,
    model_outputs,
    save_tiny_model,
)

from pipelines.handler import (
    InvalidModelError,
    NeXtVLADModelHandler,
    ScoringModel,
    inspect_model,
    pad_batch,
    resolve_model_file,
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("handler") / "run" / "model.keras")


@pytest.fixture(scope="module")
def videos():
    records = good_frame_records(np.random.default_rng(0), 5, prefix="h", min_frames=1, max_frames=12)
    return [decode_frame_record(r) for r in records.values()]


def test_batch_is_padded_only_to_its_longest_video_with_zeros(videos):
    batch = pad_batch(videos[:3], "frame")
    lengths = [v["num_frames"] for v in videos[:3]]
    assert batch["rgb"].shape == (3, max(lengths), 1024) and batch["audio"].shape == (3, max(lengths), 128)
    assert batch["num_frames"].tolist() == lengths and batch["num_frames"].dtype == np.int32
    assert batch["rgb"].dtype == np.uint8 and batch["audio"].dtype == np.uint8  # as stored
    for i, video in enumerate(videos[:3]):
        np.testing.assert_array_equal(batch["rgb"][i, : lengths[i]], video["rgb"])
        assert not batch["rgb"][i, lengths[i] :].any() and not batch["audio"][i, lengths[i] :].any()


def test_batch_is_padded_up_to_the_first_length_that_holds_its_longest_video(videos):
    longest = max(v["num_frames"] for v in videos)
    assert pad_batch(videos, "frame", lengths=(longest - 1, longest + 3, 50))["rgb"].shape[1] == longest + 3
    assert pad_batch(videos, "frame", lengths=(longest,))["audio"].shape[1] == longest
    assert pad_batch(videos, "frame", lengths=(longest - 1,))["rgb"].shape[1] == longest  # none holds it
    batch = pad_batch(videos, "frame", lengths=(longest + 3,))
    assert batch["num_frames"].tolist() == [v["num_frames"] for v in videos]
    assert not batch["rgb"][:, longest:].any() and not batch["audio"][:, longest:].any()


def test_padding_to_a_bucket_end_changes_no_score(model_path, videos):
    model = NeXtVLADModelHandler(str(model_path)).load_model()
    longest = max(v["num_frames"] for v in videos)
    tight = model.score(pad_batch(videos, "frame"))
    padded = model.score(pad_batch(videos, "frame", lengths=(longest + 20,)))
    for name in ("predictions", "embedding"):
        np.testing.assert_allclose(padded[name], tight[name], atol=1e-6)


def test_run_inference_returns_numpy_equal_to_predicting_each_video_alone(model_path, videos):
    handler = NeXtVLADModelHandler(str(model_path), batch_size=4)
    model = handler.load_model()
    [result] = handler.run_inference(videos, model)  # one result per batch
    reference = keras.saving.load_model(model_path)
    assert [e["id"] for e in result.examples] == [v["id"] for v in videos]
    for name, size, value in (
        ("predictions", NUM_CLASSES, result.predictions),
        ("embedding", HIDDEN_SIZE, result.embeddings),
    ):
        assert type(value) is np.ndarray and value.shape == (len(videos), size), name
        for i, video in enumerate(videos):
            np.testing.assert_allclose(value[i], model_outputs(reference, video)[name], atol=1e-5)


def test_batching_honours_batch_size_and_sharing_options(model_path):
    handler = NeXtVLADModelHandler(str(model_path), batch_size=48)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 48, "max_batch_size": 48}
    assert not handler.share_model_across_processes()
    shared = NeXtVLADModelHandler(str(model_path), share_model_across_processes=True, model_copies=2)
    assert shared.share_model_across_processes() and shared.model_copies() == 2


def test_reduced_precision_stays_close_to_float32(model_path, videos):
    exact = ScoringModel(str(model_path)).score(pad_batch(videos, "frame"))
    mixed_model = ScoringModel(str(model_path), precision="mixed")
    mixed = mixed_model.score(pad_batch(videos, "frame"))
    assert {layer.compute_dtype for layer in mixed_model.keras_model.layers} & {"bfloat16", "float16"}
    assert mixed["embedding"].dtype == np.float32
    np.testing.assert_allclose(mixed["predictions"], exact["predictions"], atol=2e-2)
    np.testing.assert_allclose(mixed["embedding"], exact["embedding"], atol=2e-2)


def test_a_model_directory_resolves_to_its_model_keras(model_path):
    assert resolve_model_file(str(model_path.parent)) == str(model_path)
    info = inspect_model(str(model_path.parent))
    assert (info.input_format, info.num_classes, info.embedding_size) == ("frame", NUM_CLASSES, HIDDEN_SIZE)


def test_a_video_level_model_is_recognised(tmp_path):
    info = inspect_model(str(save_tiny_model(tmp_path / "video.keras", input_format="video")))
    assert info.input_format == "video"
    handler = NeXtVLADModelHandler(info.path, input_format="frame")
    with pytest.raises(InvalidModelError, match="takes video-level inputs.*input_format='video'"):
        handler.load_model()


def test_a_directory_without_model_keras_is_rejected(tmp_path):
    with pytest.raises(InvalidModelError, match="directory has no model.keras"):
        resolve_model_file(str(tmp_path))
