"""Analytic forward-pass FLOP counts (multiply-adds × 2) of the models, for efficiency ratios.

Only the matrix products are counted: they are where the time should go, and element-wise work
(softmax, BatchNorm, sigmoid, L2-normalisation) is what makes a model fall short of the machine's
matmul rate. Compare against a measured matmul FLOP/s on the same machine.
"""

from __future__ import annotations

from nextvlad.config import ModelConfig


def _nextvlad_flops(frames: int, features: int, clusters: int, groups: int, expansion: int) -> int:
    expanded = expansion * features
    group_size = expanded // groups
    return (
        2
        * frames
        * (
            features * expanded  # expansion Dense(λN)
            + expanded * groups  # attention Dense(G)
            + expanded * groups * clusters  # cluster logits
            + groups * clusters * group_size  # assignmentsᵀ · grouped frames
        )
    )


def _netvlad_flops(frames: int, features: int, clusters: int) -> int:
    return 2 * frames * (features * clusters + clusters * features)


def pooled_size(config: ModelConfig) -> int:
    """Length of the concatenated pooled vector fed to the hidden layer."""
    if config.input_format == "video" or config.pooling == "mean":
        return config.rgb_size + config.audio_size
    if config.pooling == "netvlad":
        return config.rgb_size * config.cluster_size + config.audio_size * config.audio_cluster_size
    return (
        config.expansion * config.rgb_size // config.groups * config.cluster_size
        + config.expansion * config.audio_size // config.audio_groups * config.audio_cluster_size
    )


def forward_flops(config: ModelConfig, *, num_frames: int | None = None) -> int:
    """FLOPs of one video's forward pass through the matrix products of the model.

    Args:
        config: the model.
        num_frames: frames per video; defaults to `config.max_frames`. Ignored for video-level
            models.

    Returns:
        2 × multiply-adds, summed over all branches and the mixture gate.
    """
    frames = config.max_frames if num_frames is None else num_frames
    pooling = 0
    if config.input_format == "frame":
        if config.pooling == "nextvlad":
            pooling = _nextvlad_flops(
                frames, config.rgb_size, config.cluster_size, config.groups, config.expansion
            ) + _nextvlad_flops(
                frames, config.audio_size, config.audio_cluster_size, config.audio_groups, config.expansion
            )
        elif config.pooling == "netvlad":
            pooling = _netvlad_flops(frames, config.rgb_size, config.cluster_size) + _netvlad_flops(
                frames, config.audio_size, config.audio_cluster_size
            )
    h = config.hidden_size
    head = 2 * (pooled_size(config) * h + 2 * h * (h // config.gating_reduction))
    classes = config.num_classes
    if config.classifier == "moe":
        head += 2 * h * classes * (2 * config.moe_mixtures + 1)
    else:
        head += 2 * h * classes
    total = config.mix_number * (pooling + head)
    if config.mix_number > 1:
        total += 2 * (config.rgb_size + config.audio_size) * config.mix_number
    return total
