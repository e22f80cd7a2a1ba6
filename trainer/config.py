"""How to train: `TrainConfig`, the files a run writes into its model_dir, and the learning-rate schedules.

Each `TrainConfig` field carries the help of its `python -m trainer.train` flag in its metadata
(`nextvlad.config.config_field`); `trainer.train` generates the flags from them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nextvlad.config import config_field, config_from_dict

# Files in model_dir.
MODEL_CONFIG_FILE = "config.json"
TRAIN_CONFIG_FILE = "train_config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
LABEL_NAMES_FILE = "label_names.csv"

PAPER_DECAY_EXAMPLES = 2_500_000  # the paper decays the learning rate every 2.5M examples
PAPER_LEARNING_RATE = 2e-4  # the paper's Adam learning rate: the default of --schedule paper
MIN_DECAYS_PER_RUN = 5  # shorter runs decay more often, so that they still anneal (see TrainConfig)
DEFAULT_EPOCHS = 5  # when the preset has no epochs of its own
# When the preset has none and the schedule is cosine: the best peak of the sweep of every frame-level
# pooling on the pseudo-frame benchmark and of the `demo` preset on its synthetic corpus (BENCHMARKS.md).
DEFAULT_LEARNING_RATE = 3e-3
SCHEDULES = ("cosine", "paper")
# Training defaults of each preset that differ from TrainConfig's, chosen on the development split (the
# README's "Training defaults" table lists them and a test holds the two together; BENCHMARKS.md has the
# runs). An explicit flag always wins.
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "video": dict(epochs=6, learning_rate=1e-3),
}
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")

# `group` in a field's metadata: the --help section of its flag (the others are under "training").
DATA = "data and outputs"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: data, optimisation schedule, outputs. The model itself is a `ModelConfig`.

    Fields marked `preset_dependent` default to None on the command line and are resolved from
    `--preset` and `--schedule` (`PRESET_TRAINING`, `PAPER_LEARNING_RATE`) unless given. Fields marked
    `recipe` shape the optimisation: a run resumes only under the recipe it was started with
    (`trainer.checks.check_resumed_recipe`).
    """

    # TFRecord globs, local or gs://; eval_data is evaluated after every epoch.
    train_data: tuple[str, ...] = config_field(
        help="training TFRecord glob(s)", group=DATA, metavar="PATTERN"
    )
    model_dir: str = config_field(help="output folder; re-running with it resumes training", group=DATA)
    eval_data: tuple[str, ...] = config_field(
        (), help="held-out TFRecord glob(s)", group=DATA, metavar="PATTERN"
    )
    # The paper: 80 per GPU on 2 GPUs.
    batch_size: int = config_field(160, help="global batch size (the paper: 160)", recipe=True)
    epochs: int = config_field(
        DEFAULT_EPOCHS,
        help=f"epochs of --steps_per_epoch steps (default: the preset's, else {DEFAULT_EPOCHS})",
        preset_dependent=True,
    )
    max_steps: int | None = config_field(None, help="stop after this many global steps (overrides --epochs)")
    steps_per_epoch: int | None = config_field(
        None, help="steps per epoch (default: one pass over --train_data)"
    )
    # `cosine`: linear warm-up from 0 to `learning_rate` over `warmup_fraction` of the run, then cosine
    # decay to 0 at the run's last step. `paper`: the paper's staircase, ×`lr_decay_rate` every
    # `lr_decay_examples` examples from `learning_rate` (which then defaults to 2e-4 on the CLI).
    schedule: str = config_field(
        "cosine", help="learning-rate schedule (see below)", choices=SCHEDULES, recipe=True
    )
    learning_rate: float = config_field(
        DEFAULT_LEARNING_RATE,
        help=f"Adam's peak (cosine) or initial (paper) learning rate (default: the preset's, else "
        f"{DEFAULT_LEARNING_RATE:g}; {PAPER_LEARNING_RATE:g} with --schedule paper)",
        preset_dependent=True,
        recipe=True,
    )
    warmup_fraction: float = config_field(
        0.05, help="cosine schedule: share of the steps spent warming up", recipe=True
    )
    lr_decay_rate: float = config_field(
        0.8, help="paper schedule: staircase learning-rate decay factor", recipe=True
    )
    # Default: min(2.5M, run / 5), see `lr_decay_steps`.
    lr_decay_examples: int | None = config_field(
        None, help="paper schedule: examples between decays (default: see below)", recipe=True
    )
    # Training records read to set the classifier's initial bias to each class's log-odds (0: the same
    # frequency, 3 labels / num_classes, for every class).
    prior_records: int = config_field(
        100_000,
        help="training records counted for the classifier's initial bias (0: 3 labels / classes)",
    )
    clipnorm: float = config_field(1.0, help="per-variable gradient-norm clipping", recipe=True)
    # 0 in the paper.
    label_smoothing: float = config_field(
        0.0, help="smooth the 0/1 targets towards 0.5 by this much", recipe=True
    )
    seed: int = config_field(0, help="random seed (weights, dropout, shuffling)")
    pca_eigenvals: str | None = config_field(
        None, help="yt8m_pca/eigenvals.npy: reverse-whiten rgb (paper §3.3)", group=DATA
    )
    mixed_precision: bool = config_field(False, help="mixed_float16 on GPU, mixed_bfloat16 on CPU")
    distribution: str = config_field(
        "none",
        help="tf.distribute strategy (KERAS_BACKEND=tensorflow): mirrored = all GPUs of this host, "
        "multi_worker = the hosts in TF_CONFIG (e.g. a Vertex AI training job)",
        choices=DISTRIBUTIONS,
    )
    checkpoint_steps: int = config_field(
        500, help="checkpoint every this many steps (and at every epoch end)"
    )
    keep_checkpoints: int = config_field(2, help="newest checkpoints kept")
    eval_batch_size: int | None = config_field(None, help="evaluation batch size (default: --batch_size)")
    shuffle_buffer: int = config_field(4096, help="records in the shuffle buffer")
    check_records: int = config_field(64, help="records of each data pattern validated before training")
    frame_bucket: int | None = config_field(
        None, help="pad frame axes to a multiple of this (default: 32 on JAX or GPU, else no padding)"
    )
    export_saved_model: bool = config_field(False, help="also write model_dir/saved_model", group=DATA)
    label_names: str | None = config_field(
        None, help="label_id,label_name CSV, copied next to the model", group=DATA
    )
    # E.g. a video-level model to fine-tune on segment labels.
    init_model: str | None = config_field(
        None,
        help="start from this trained model_dir's weights; the model is its config.json (preset and model "
        "flags must agree with it)",
        group=DATA,
    )
    segment_labels: bool = config_field(
        False,
        help="train on the rated 5-frame segments of --train_data (the 2019 segment release) instead of "
        "whole videos: rated classes' present/absent are the targets, unrated classes are left out of the "
        "loss; with --init_model, fine-tunes a video-level model. --eval_data then reports segment mAP",
        group=DATA,
        recipe=True,
    )
    verbose: bool = True  # progress bars (off with the CLI's --quiet)

    def __post_init__(self) -> None:
        for name in ("train_data", "eval_data"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first bad field and what would fix it."""

        def fail(message: str) -> None:
            raise ValueError(f"Invalid TrainConfig: {message}")

        if not self.train_data:
            fail("train_data is empty; pass --train_data 'path/train*.tfrecord'")
        if not self.model_dir:
            fail("model_dir is empty; pass --model_dir DIR")
        for name in ("batch_size", "epochs", "checkpoint_steps", "keep_checkpoints", "shuffle_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"{name}={value!r}; expected a positive integer")
        for name in ("max_steps", "steps_per_epoch", "lr_decay_examples", "eval_batch_size", "frame_bucket"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                fail(f"{name}={value!r}; expected a positive integer or None")
        if not isinstance(self.check_records, int) or self.check_records < 0:
            fail(f"check_records={self.check_records!r}; expected an integer >= 0")
        if not self.learning_rate > 0:
            fail(f"learning_rate={self.learning_rate!r}; expected > 0")
        if self.schedule not in SCHEDULES:
            fail(f"schedule={self.schedule!r}; expected one of {SCHEDULES}")
        if not 0 <= self.warmup_fraction < 1:
            fail(f"warmup_fraction={self.warmup_fraction!r}; expected 0 <= value < 1")
        if (
            isinstance(self.prior_records, bool)
            or not isinstance(self.prior_records, int)
            or self.prior_records < 0
        ):
            fail(f"prior_records={self.prior_records!r}; expected an integer >= 0")
        if not 0 < self.lr_decay_rate <= 1:
            fail(f"lr_decay_rate={self.lr_decay_rate!r}; expected 0 < rate <= 1")
        if not self.clipnorm > 0:
            fail(f"clipnorm={self.clipnorm!r}; expected > 0")
        if not 0 <= self.label_smoothing < 1:
            fail(f"label_smoothing={self.label_smoothing!r}; expected 0 <= value < 1")
        if self.distribution not in DISTRIBUTIONS:
            fail(f"distribution={self.distribution!r}; expected one of {DISTRIBUTIONS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, values)


def model_dir_path(model_dir: str, *names: str) -> str:
    """A path inside `model_dir` (local or gs://)."""
    return "/".join([model_dir.rstrip("/"), *names])


def lr_decay_steps(train_config: TrainConfig, total_steps: int) -> int:
    """Steps between two ×`lr_decay_rate` decays of the learning rate.

    The paper decays every 2.5M examples, over runs of tens of millions of examples. A run shorter
    than 5 × 2.5M examples decays every `total examples / 5` instead, so it still anneals through
    the same ~5 decays a long run makes in its last stretch; `lr_decay_examples` overrides both.
    """
    examples = train_config.lr_decay_examples
    if examples is None:
        examples = min(PAPER_DECAY_EXAMPLES, total_steps * train_config.batch_size / MIN_DECAYS_PER_RUN)
    return max(1, round(examples / train_config.batch_size))


def learning_rate_schedule(train_config: TrainConfig, total_steps: int) -> Any:
    """The Keras learning-rate schedule of `train_config.schedule` for a run of `total_steps` steps.

    `cosine` scales with the run: a linear warm-up from 0 to `learning_rate` over `warmup_fraction` of
    the steps, then a cosine decay to 0 at `total_steps`, whatever the run's length. `paper` is the
    paper's staircase (`learning_rate` × `lr_decay_rate` every `lr_decay_steps` steps), made for 460k
    steps on 5M videos.
    """
    import keras

    if train_config.schedule == "paper":
        return keras.optimizers.schedules.ExponentialDecay(
            train_config.learning_rate,
            decay_steps=lr_decay_steps(train_config, total_steps),
            decay_rate=train_config.lr_decay_rate,
            staircase=True,
        )
    warmup = round(train_config.warmup_fraction * total_steps)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(train_config.learning_rate, decay_steps=total_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, total_steps - warmup),
        warmup_target=train_config.learning_rate,
        warmup_steps=warmup,
    )
