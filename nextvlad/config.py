"""Model configuration: one frozen dataclass with every hyper-parameter, plus named presets.

The resolved config is saved next to every trained model as JSON (`config.json`), and the model
can be rebuilt from that file alone: `build_model(ModelConfig.from_json(path))`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

POOLINGS = ("nextvlad", "netvlad", "mean")
CLASSIFIERS = ("logistic", "moe")
INPUT_FORMATS = ("frame", "video")
HIDDEN_ACTIVATIONS = ("linear", "relu")


def config_field(default: Any = dataclasses.MISSING, *, help: str, **metadata: Any) -> Any:
    """A dataclass field that documents itself: `help` (and optional `choices`, ...) go into its metadata,
    from which `trainer.train` generates the field's command-line flag."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """`cls(**values)` for a config dataclass, refusing unknown keys by name (e.g. a config.json written
    by a newer version) instead of a bare TypeError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} field(s) {unknown}; known fields are {sorted(known)}")
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every hyper-parameter of a NeXtVLAD-family model.

    Parameter counts of the paper's presets are asserted by the test suite (see docs/design.md, "Model").
    """

    # Each field's help is what `python -m trainer.train --help` shows for its flag.
    input_format: str = config_field(
        "frame",
        help="Input: frame-level SequenceExamples (`frame`) or video-level mean features (`video`).",
        choices=INPUT_FORMATS,
    )
    rgb_size: int = config_field(1024, help="Inception rgb feature size per frame")
    audio_size: int = config_field(128, help="VGGish audio feature size per frame")
    max_frames: int = config_field(
        300, help="frames beyond this are dropped by the model's preprocessing layer"
    )
    reverse_whitening: bool = config_field(
        False,
        help="The paper's reverse whitening of rgb (or mean_rgb); its scale is a weight of the model, set "
        "from the dataset's PCA eigenvalues when the model is built for training "
        "(`trainer.train --pca_eigenvals`).",
    )
    num_classes: int = config_field(3862, help="2018 YouTube-8M vocabulary")
    pooling: str = config_field(
        "nextvlad",
        help="Frame pooling. `nextvlad` (the paper), `netvlad` (Arandjelović et al.) or `mean` (baseline).",
        choices=POOLINGS,
    )
    cluster_size: int = config_field(128, help="K for the rgb branch; the audio branch uses K/2")
    groups: int = config_field(8, help="G for the rgb branch; the audio branch uses G/2")
    expansion: int = config_field(2, help="λ: the frame features are expanded to λN before grouping")
    # Video-level head.
    hidden_size: int = config_field(2048, help="H: size of the embedding")
    hidden_activation: str = config_field(
        "linear", help="the paper uses no activation after the hidden BatchNorm", choices=HIDDEN_ACTIVATIONS
    )
    gating_reduction: int = config_field(8, help="r: the SE context gate's bottleneck is H / r")
    drop_rate: float = config_field(0.5, help="dropout on the pooled features before the hidden layer")
    classifier: str = config_field("logistic", help="`logistic` or `moe`", choices=CLASSIFIERS)
    moe_mixtures: int = config_field(2, help="experts per class for the MoE classifier")
    # Mixture of branches with on-the-fly knowledge distillation (the paper's final submission).
    mix_number: int = config_field(1, help="M: number of full branches; 1 = a single model")
    kd_temperature: float = config_field(3.0, help="T in the distillation term")
    kd_weight: float = config_field(9.0, help="λ_KD")
    l2_penalty: float = config_field(1e-5, help="L2 on the classifier weights")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent field and what would fix it."""

        def fail(message: str) -> None:
            raise ValueError(f"Invalid ModelConfig: {message}")

        if self.input_format not in INPUT_FORMATS:
            fail(f"input_format={self.input_format!r}; expected one of {INPUT_FORMATS}")
        if self.pooling not in POOLINGS:
            fail(f"pooling={self.pooling!r}; expected one of {POOLINGS}")
        if self.classifier not in CLASSIFIERS:
            fail(f"classifier={self.classifier!r}; expected one of {CLASSIFIERS}")
        if self.hidden_activation not in HIDDEN_ACTIVATIONS:
            fail(f"hidden_activation={self.hidden_activation!r}; expected 'linear' or 'relu'")
        for name in (
            "rgb_size",
            "audio_size",
            "max_frames",
            "num_classes",
            "cluster_size",
            "groups",
            "expansion",
            "hidden_size",
            "gating_reduction",
            "moe_mixtures",
            "mix_number",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(f"{name}={value!r}; expected a positive integer")
        if not isinstance(self.reverse_whitening, bool):
            fail(f"reverse_whitening={self.reverse_whitening!r}; expected true or false")
        if not 0.0 <= self.drop_rate < 1.0:
            fail(f"drop_rate={self.drop_rate!r}; expected 0 <= drop_rate < 1")
        if self.kd_temperature <= 0:
            fail(f"kd_temperature={self.kd_temperature!r}; expected > 0")
        if self.kd_weight < 0 or self.l2_penalty < 0:
            fail(f"kd_weight={self.kd_weight!r}, l2_penalty={self.l2_penalty!r}; expected >= 0")
        if self.hidden_size % self.gating_reduction:
            fail(
                f"hidden_size={self.hidden_size} is not divisible by gating_reduction={self.gating_reduction}"
            )
        if self.input_format == "frame" and self.pooling in ("nextvlad", "netvlad"):
            if self.pooling == "nextvlad":
                for branch, size, groups in (
                    ("rgb", self.rgb_size, self.groups),
                    ("audio", self.audio_size, self.audio_groups),
                ):
                    if (self.expansion * size) % groups:
                        fail(
                            f"expansion*{branch}_size={self.expansion * size} is not divisible by "
                            f"its group count {groups}; pick groups that divide it"
                        )
                if self.groups % 2 and self.groups > 1:
                    fail(f"groups={self.groups} must be even (the audio branch uses groups/2)")
            if self.cluster_size % 2 and self.cluster_size > 1:
                fail(f"cluster_size={self.cluster_size} must be even (the audio branch uses K/2)")

    # The audio branch runs at half the clusters and groups of the rgb branch (paper §4.1).
    @property
    def audio_cluster_size(self) -> int:
        return max(1, self.cluster_size // 2)

    @property
    def audio_groups(self) -> int:
        return max(1, self.groups // 2)

    @property
    def embedding_size(self) -> int:
        """Length of the `embedding` output: H per branch, concatenated over branches."""
        return self.hidden_size * self.mix_number

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return config_from_dict(cls, values)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> ModelConfig:
        """Reads a config from a JSON string or from a path to a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **overrides: Any) -> ModelConfig:
        return dataclasses.replace(self, **overrides)

    # --- presets ---------------------------------------------------------------------------------
    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        return tuple(PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Returns a named preset, optionally with some fields overridden.

        Presets: `paper` (Table 1 best single model, 89M parameters), `final-single` (Table 2 row 1,
        79M), `final` (the 3-branch submission with distillation, 237M), `netvlad` and `meanpool`
        (the paper's baselines), `demo` (trains on a CPU in about a minute) and `video` (for
        video-level records with mean features).
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # Table 1: NeXtVLAD, K=128, G=8, λ=2, H=2048, r=8, logistic classifier.
    "paper": dict(cluster_size=128, groups=8, hidden_size=2048, gating_reduction=8),
    # Table 2 row 1: the single branch of the final submission.
    "final-single": dict(cluster_size=112, groups=8, hidden_size=2048, gating_reduction=16),
    # Table 2: three branches mixed by a learned gate, trained with on-the-fly distillation.
    "final": dict(cluster_size=112, groups=8, hidden_size=2048, gating_reduction=16, mix_number=3),
    # Table 1 baseline: NetVLAD pooling with the same head.
    "netvlad": dict(pooling="netvlad", cluster_size=64, hidden_size=2048, gating_reduction=8),
    # Mean pooling of frame features, the same head.
    "meanpool": dict(pooling="mean", hidden_size=2048, gating_reduction=8),
    # Small enough to train on two CPU cores in about a minute on the synthetic corpus.
    "demo": dict(
        num_classes=20,
        cluster_size=16,
        groups=4,
        hidden_size=256,
        gating_reduction=4,
        drop_rate=0.3,
    ),
    # Video-level records (mean_rgb, mean_audio): no frame pooling, the paper's head with MoE, three branches
    # with distillation and L2 1e-4 (what the development split picked: BENCHMARKS.md, "Real data").
    "video": dict(
        input_format="video",
        pooling="mean",
        hidden_size=2048,
        hidden_activation="relu",
        gating_reduction=8,
        drop_rate=0.5,
        classifier="moe",
        moe_mixtures=2,
        mix_number=3,
        l2_penalty=1e-4,
    ),
}
