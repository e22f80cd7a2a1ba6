"""Train a NeXtVLAD model (single or the mixture with distillation) on YouTube-8M TFRecords.

Run (a small model on a synthetic corpus, about a minute on two CPU cores):

    python -m nextvlad.synthetic --output /tmp/synthetic --num_videos 2000 --num_classes 20
    python -m trainer.train --preset demo --train_data '/tmp/synthetic/*-0000[0-2]-*' \\
        --eval_data '/tmp/synthetic/*-00003-*' --model_dir /tmp/runs/demo --epochs 3

The paper's model on frame-level data, or the video-level model on the public video-level records:

    python -m trainer.train --preset paper --train_data 'train*.tfrecord' --eval_data 'validate*.tfrecord' \\
        --model_dir runs/paper --pca_eigenvals yt8m_pca/eigenvals.npy
    python -m trainer.train --preset video --train_data 'video/train*.tfrecord' --model_dir runs/video

Fine-tune a trained frame-level model on the rated 5-frame segments of the 2019 segment release (the
model comes from --init_model's config.json; --eval_data reports segment mAP@100000):

    python -m trainer.train --segment_labels --init_model runs/paper --train_data 'segments/train*.tfrecord' \
        --eval_data 'segments/validate*.tfrecord' --model_dir runs/paper-segments --epochs 2

Any `ModelConfig` field can be overridden (`--cluster_size 64 --mix_number 3 ...`); `--help` lists them.
Everything goes into `--model_dir`: `config.json` (the `ModelConfig`: `build_model(ModelConfig.from_json(
path))` rebuilds the model), `train_config.json`, `checkpoints/`, `logs/` (TensorBoard), `history.csv`
(one row per epoch), `metrics.json` (final evaluation and speed) and `model.keras`, the serving model
(outputs `predictions` and `embedding`). Killed at any point, the same command resumes from the last
checkpoint with the same global step and optimizer state.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before TensorFlow is imported (via keras)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from nextvlad.config import ModelConfig
from trainer.config import (
    DATA,
    MIN_DECAYS_PER_RUN,
    MODEL_CONFIG_FILE,
    PAPER_DECAY_EXAMPLES,
    PAPER_LEARNING_RATE,
    PRESET_TRAINING,
    TrainConfig,
    model_dir_path,
)
from trainer.training import train


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none (model flags default to the preset's value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, [], False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _add_field_flags(
    parser: Any, config_class: type, *, group: str | None = None, overrides: bool = False
) -> None:
    """Adds a `--name` flag for each field of `config_class` whose metadata has a `help` and the `group`.

    The flag's type comes from the field's annotation (`int | None` -> int; `tuple[str, ...]` -> one or
    more values), its help, choices and metavar from the field's metadata. Fields without a default are
    required, and fields marked `preset_dependent` default to None (`resolve_configs` fills them in).
    With `overrides` (the fields a preset fills), every flag defaults to None, "keep the preset's value",
    and booleans take a value (`--reverse_whitening false`); otherwise booleans are switches.
    """
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        if "help" not in field.metadata or field.metadata.get("group") != group:
            continue
        annotation = hints[field.name]
        options: dict[str, Any] = {"help": field.metadata["help"]}
        options.update((key, field.metadata[key]) for key in ("choices", "metavar") if key in field.metadata)
        origin = typing.get_origin(annotation)
        many = origin is tuple
        if many:
            options["nargs"] = "+"
        if origin in (tuple, types.UnionType):  # tuple[str, ...] -> str, int | None -> int
            annotation = typing.get_args(annotation)[0]
        if field.default is dataclasses.MISSING:
            options["required"] = True
        elif overrides or field.metadata.get("preset_dependent"):
            options["default"] = None
        else:
            options["default"] = list(field.default) if many else field.default
        if annotation is bool and not overrides:
            options["action"] = "store_true"
        else:
            options["type"] = _parse_bool if annotation is bool else annotation
        parser.add_argument(f"--{field.name}", **options)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser: data and output flags, TrainConfig flags, one flag per ModelConfig field.

    The flags, their types and help come from the fields of `TrainConfig` and `ModelConfig`.
    """
    parser = argparse.ArgumentParser(
        prog="python -m trainer.train",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Learning-rate schedules: --schedule cosine (default) warms Adam up linearly from 0 to "
            "--learning_rate over the first --warmup_fraction of the run's steps, then decays it along a "
            "cosine to 0 at the run's last step, so any run length anneals fully. --schedule paper is the "
            f"paper's recipe: Adam at --learning_rate (default {PAPER_LEARNING_RATE:g} with this schedule), "
            "multiplied by --lr_decay_rate (staircase) every --lr_decay_examples examples; by default every "
            f"{PAPER_DECAY_EXAMPLES:,} examples as in the paper, or every (total training examples / "
            f"{MIN_DECAYS_PER_RUN}) when the run is shorter than {MIN_DECAYS_PER_RUN} x "
            f"{PAPER_DECAY_EXAMPLES:,} examples. "
            "Defaults that depend on the preset (--epochs, --learning_rate, and the preset's model fields): "
            "see the README's table of training defaults. The classifier's bias starts at each class's "
            "log-odds, counted over up to --prior_records training records."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_field_flags(parser.add_argument_group(DATA), TrainConfig, group=DATA)

    run = parser.add_argument_group("training")
    run.add_argument(
        "--preset",
        default="paper",
        help=f"model preset ({', '.join(ModelConfig.preset_names())}); flags below override its fields",
    )
    _add_field_flags(run, TrainConfig)
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    model = parser.add_argument_group("model (each flag overrides the preset's ModelConfig field)")
    _add_field_flags(model, ModelConfig, overrides=True)
    return parser


def resolve_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The `ModelConfig` (preset + overrides) and `TrainConfig` of parsed arguments.

    Raises:
        ValueError: unknown preset, `--input_format` contradicting the preset, or an invalid value.
    """
    preset = ModelConfig.preset(args.preset)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ModelConfig)
        if getattr(args, f.name) is not None
    }
    if "input_format" in overrides and overrides["input_format"] != preset.input_format:
        raise ValueError(
            f"--input_format {overrides['input_format']} contradicts --preset {args.preset} "
            f"(a {preset.input_format}-level model); for {overrides['input_format']}-level data pick "
            + (
                "--preset video"
                if overrides["input_format"] == "video"
                else "a frame-level preset such as paper or demo"
            )
        )
    model_config = preset.replace(**overrides)
    if getattr(args, "init_model", None):
        model_config = _init_model_config(args.init_model, overrides)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {name: getattr(args, name) for name in train_fields if hasattr(args, name)}
    preset_training = dict(PRESET_TRAINING.get(args.preset, {}))
    if values.get("schedule") == "paper":  # the paper's recipe, unless the learning rate is given
        preset_training["learning_rate"] = PAPER_LEARNING_RATE
    for name in (f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("preset_dependent")):
        if values.get(name) is None:
            values.pop(name, None)
            if name in preset_training:
                values[name] = preset_training[name]
    values["verbose"] = not args.quiet
    train_config = TrainConfig(**values)
    return model_config, train_config


def _init_model_config(init_model: str, overrides: dict[str, Any]) -> ModelConfig:
    """The `ModelConfig` of `--init_model` (its config.json); model flags may not contradict it."""
    from nextvlad import files

    folder = init_model.rsplit("/", 1)[0] if init_model.endswith(".keras") else init_model.rstrip("/")
    path = model_dir_path(folder, MODEL_CONFIG_FILE)
    try:
        config = ModelConfig.from_json(files.read_text(path))
    except OSError:
        raise FileNotFoundError(
            f"--init_model {init_model}: no {path}; pass the model_dir of a model trained by trainer.train"
        ) from None
    changed = [f"--{name} {value!r} (it has {getattr(config, name)!r})" for name, value in overrides.items()
               if getattr(config, name) != value]  # fmt: skip
    if changed:
        raise ValueError(
            f"--init_model {init_model} fixes the model; drop the model flags contradicting its config.json: "
            + ", ".join(changed)
        )
    return config


def format_summary(result: dict[str, Any], model_config: ModelConfig, preset: str) -> str:
    """A few lines for the terminal at the end of training."""
    seconds = result["train_seconds"]
    lines = [
        f"Trained {model_config.pooling} model (preset {preset}, {result['num_parameters']:,} parameters): "
        f"step {result['global_step']:,}/{result['total_steps']:,} ({result['epochs']:.2f} epochs)"
        + (f", resumed at step {result['initial_step']:,}" if result["initial_step"] else ""),
        f"  this run: {seconds:.1f} s of training, {result['examples_per_second'] or 0:.1f} examples/s "
        f"({result['backend']}, {result['mixed_precision']})",
    ]
    if result.get("segment_map") is not None:
        lines.append(
            f"  eval on {result['num_ratings']:,} segment ratings of {result['num_videos']:,} videos: "
            f"segment mAP@{result['max_predictions']:,} {result['segment_map']:.4f}"
        )
    if result.get("gap") is not None:
        lines.append(
            f"  eval on {result['num_videos']:,} videos: GAP@20 {result['gap']:.4f}  Hit@1 "
            f"{result['hit_at_one']:.4f}  PERR {result['perr']:.4f}  mAP {result['map']:.4f}"
        )
    lines.append(f"  serving model: {result['model']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("trainer", "nextvlad"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        model_config, train_config = resolve_configs(args)
        result = train(model_config, train_config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(result, model_config, "of --init_model" if args.init_model else args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
