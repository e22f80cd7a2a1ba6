"""ModelConfig: presets, JSON round-trip and validation errors a user would hit."""

import json

import pytest

from nextvlad import ModelConfig


def test_json_round_trip_through_file(tmp_path):
    config = ModelConfig.preset("final", drop_rate=0.4)
    path = tmp_path / "config.json"
    config.to_json(path)
    assert json.loads(path.read_text())["mix_number"] == 3
    assert ModelConfig.from_json(path) == config
    assert ModelConfig.from_json(config.to_json()) == config


def test_presets_are_the_documented_ones():
    assert set(ModelConfig.preset_names()) == {
        "paper",
        "final-single",
        "final",
        "demo",
        "netvlad",
        "meanpool",
        "video",
    }
    paper = ModelConfig.preset("paper")
    assert (paper.cluster_size, paper.groups, paper.hidden_size, paper.gating_reduction) == (128, 8, 2048, 8)
    assert (paper.audio_cluster_size, paper.audio_groups) == (64, 4)
    assert ModelConfig.preset("final").embedding_size == 3 * 2048
    assert ModelConfig.preset("video").input_format == "video"


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"Unknown preset 'papr'.*paper"):
        ModelConfig.preset("papr")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pooling="max"), r"pooling='max'"),
        (dict(classifier="svm"), r"classifier='svm'"),
        (dict(cluster_size=0), r"cluster_size=0"),
        (dict(drop_rate=1.0), r"drop_rate=1.0"),
        (dict(hidden_size=100, gating_reduction=8), r"hidden_size=100 is not divisible"),
        (dict(groups=6), r"expansion\*rgb_size=2048 is not divisible by its group count 6"),
    ],
)
def test_invalid_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.preset("paper", **overrides)


def test_unknown_field_in_json_is_named():
    with pytest.raises(ValueError, match=r"Unknown ModelConfig field\(s\) \['clusters'\]"):
        ModelConfig.from_dict({"clusters": 3})
