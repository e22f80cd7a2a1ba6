"""Analytic FLOP counts, checked against a hand count of the paper preset."""

from nextvlad import ModelConfig
from nextvlad.flops import forward_flops, pooled_size


def test_paper_preset_forward_flops_by_hand():
    # rgb NeXtVLAD, per frame: expand 1024·2048, attention 2048·8, cluster logits 2048·1024,
    # aggregation 8·128·256 multiply-adds; audio: 128·256, 256·4, 256·256, 4·64·64.
    rgb = 2 * 300 * (1024 * 2048 + 2048 * 8 + 2048 * 1024 + 8 * 128 * 256)
    audio = 2 * 300 * (128 * 256 + 256 * 4 + 256 * 256 + 4 * 64 * 64)
    # Head: hidden 36864·2048, gate 2048·256 twice, logistic classifier 2048·3862.
    head = 2 * (36864 * 2048 + 2 * 2048 * 256 + 2048 * 3862)
    assert forward_flops(ModelConfig.preset("paper")) == rgb + audio + head == 2_922_037_248
    assert pooled_size(ModelConfig.preset("paper")) == 256 * 128 + 64 * 64


def test_flops_scale_with_frames_and_branches():
    config = ModelConfig.preset("final-single")
    assert forward_flops(config, num_frames=10) < forward_flops(config, num_frames=300)
    mixture = ModelConfig.preset("final")
    gate = 2 * 1152 * 3
    assert forward_flops(mixture) == 3 * forward_flops(config) + gate
