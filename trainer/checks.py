"""Pre-flight checks of the trainer: fail in seconds, with a message that says what to do.

Each check runs before the model is built, so a wrong path, the wrong kind of records, a label
vocabulary larger than the model's or a reused `model_dir` never costs a training run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence

import tensorflow as tf

from nextvlad import yt8m
from nextvlad.config import ModelConfig
from nextvlad.serving import describe_id_layout
from trainer.config import TrainConfig, model_dir_path

logger = logging.getLogger(__name__)

_MAX_FILES_SAMPLED = 16  # records are checked from up to this many files, spread over the list


def check_records(
    patterns: Sequence[str],
    *,
    flag: str,
    input_format: str,
    num_classes: int,
    max_frames: int,
    max_records: int = 64,
) -> list[str]:
    """Expands `patterns` and parses a sample of their records with the validating parsers.

    The sample is the first records of up to 16 files spread over the sorted file list, `max_records`
    in all, so a mixed-up file anywhere in a large list is likely to be caught.

    Args:
        patterns: file globs (local or gs://).
        flag: the command-line flag the patterns came from, for messages (e.g. `--train_data`).
        input_format: `frame` or `video`, what the model takes.
        num_classes: label ids must be below this.
        max_frames: frames kept per video.
        max_records: records parsed in all; 0 only expands the patterns.

    Returns:
        The matching files, sorted.

    Raises:
        FileNotFoundError: a pattern matches no file (the message names it).
        ValueError: no records, records of the other kind, a label id >= num_classes, or a malformed record.
    """
    try:
        files = yt8m.expand_file_pattern(list(patterns))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{flag}: {e}") from None
    if max_records < 1:
        return files
    stride = max(1, len(files) // _MAX_FILES_SAMPLED)
    sampled = files[::stride][:_MAX_FILES_SAMPLED]
    per_file = max(1, math.ceil(max_records / len(sampled)))
    checked, layouts = 0, set()
    for path in sampled:
        for record in tf.data.TFRecordDataset(path).take(per_file):
            _check_one(record.numpy(), path, flag, input_format, num_classes, max_frames)
            layouts.add(describe_id_layout(yt8m.id_feature(record.numpy())))
            checked += 1
    if checked == 0 and yt8m.count_records(files) == 0:
        raise ValueError(f"{flag}: the {len(files)} file(s) matching {list(patterns)} hold no records")
    logger.info(
        "%s: %d files; %d records checked as %s-level data (%s)",
        flag,
        len(files),
        checked,
        input_format,
        "; ".join(sorted(layouts)) or "none read",
    )
    return files


def _check_one(
    record: bytes, path: str, flag: str, input_format: str, num_classes: int, max_frames: int
) -> None:
    try:
        if input_format == "frame":
            yt8m.parse_frame_example(record, max_frames=max_frames, num_classes=num_classes)
        else:
            yt8m.parse_video_example(record, num_classes=num_classes)
    except yt8m.InvalidRecordError as e:
        if e.reason == "wrong_record_kind":
            other = "video" if input_format == "frame" else "frame"
            hint = (
                "train a video-level model on it (--preset video)"
                if other == "video"
                else "train a frame-level model on it (e.g. --preset paper, or --preset demo)"
            )
            raise ValueError(
                f"{flag}: {path} holds {other}-level records, but the model takes {input_format}-level "
                f"input (input_format={input_format!r}); {hint}, or point {flag} at {input_format}-level "
                "files."
            ) from None
        if e.reason == "label_out_of_range":
            raise ValueError(
                f"{flag}: {path}: {e}. The model has num_classes={num_classes}; pass --num_classes with the "
                "size of this data's label vocabulary."
            ) from None
        raise ValueError(
            f"{flag}: {path} holds a record that is not valid {input_format}-level data: {e}"
        ) from None


def check_model_dir(model_dir: str, config: ModelConfig, *, config_name: str, has_checkpoints: bool) -> None:
    """Refuses to resume from a `model_dir` that belongs to a different model.

    Args:
        model_dir: the output folder.
        config: the model about to be trained.
        config_name: file name of the saved model config inside `model_dir`.
        has_checkpoints: whether `model_dir` holds checkpoints.

    Raises:
        ValueError: the saved config differs (the message lists the fields), or there are checkpoints
            without a config to say what model they belong to.
    """
    saved = _saved_json(model_dir, config_name)
    if saved is None:
        if has_checkpoints:
            raise ValueError(
                f"{model_dir} holds checkpoints but no {config_name}, so they may belong to another model; "
                f"{_advice(model_dir)}."
            )
        return
    try:
        saved = ModelConfig.from_dict(saved)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{model_dir_path(model_dir, config_name)} is not a ModelConfig written by trainer.train ({e}); "
            f"{_advice(model_dir)}."
        ) from None
    if saved == config:
        return
    changed = [
        f"{name}: {value!r} -> {getattr(config, name)!r}"
        for name, value in saved.to_dict().items()
        if getattr(config, name) != value
    ]
    raise ValueError(
        f"{model_dir} already holds a different model (saved {config_name} differs: {'; '.join(changed)}). "
        f"Re-run with the same model flags to resume it, or {_advice(model_dir)}."
    )


def check_resumed_recipe(
    model_dir: str, train_config: TrainConfig, *, total_steps: int, config_name: str
) -> None:
    """Refuses to resume a run under another training recipe than the one it was started with: the
    `TrainConfig` fields marked `recipe`, and the total step count (from --epochs, --max_steps,
    --steps_per_epoch and the training records), which sets where the cosine schedule ends.

    Without this check, a changed flag or default (e.g. a preset's learning rate after an upgrade) would
    silently continue the run on a different schedule and overwrite the saved `train_config.json`, so the
    record of how the model was trained would be wrong. Call it only when `model_dir` holds checkpoints.

    Args:
        model_dir: the output folder of the run being resumed.
        train_config: the recipe about to be used.
        total_steps: the run's total steps as resolved now.
        config_name: file name of the saved training config inside `model_dir`.

    Raises:
        ValueError: a recipe field or the total step count differs from the saved one; the message lists
            them with the flags that restore the saved values.
    """
    saved = _saved_json(model_dir, config_name)
    if saved is None:
        return  # nothing to compare with
    changed, flags = [], []
    recipe = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("recipe")]
    for name in recipe:
        if name in saved and saved[name] != getattr(train_config, name):
            changed.append(f"{name}: {saved[name]!r} -> {getattr(train_config, name)!r}")
            flags.append(_flag_for(name, saved[name]))
    saved_steps = saved.get("resolved", {}).get("total_steps")
    if saved_steps is not None and saved_steps != total_steps:
        changed.append(
            f"total steps: {saved_steps} -> {total_steps} (from --epochs, --max_steps, --steps_per_epoch and "
            "the number of training records)"
        )
        flags.append(f"--max_steps {saved_steps}")
    if not changed:
        return
    raise ValueError(
        f"{model_dir} holds a run started with another training recipe ({'; '.join(changed)}), and "
        f"resuming would continue it on a different schedule. Resume it with its own: {' '.join(flags)}; "
        f"or pick a new --model_dir (add --init_model {model_dir} to start from its weights)."
    )


def _flag_for(name: str, value: object) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"(without --{name})"
    return f"--{name} {value}" if value is not None else f"(without --{name})"


def _saved_json(model_dir: str, config_name: str) -> dict | None:
    """A JSON file trainer.train wrote into `model_dir`; None when it is absent."""
    path = model_dir_path(model_dir, config_name)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(
            f"{path} is not the JSON trainer.train writes ({e}); {_advice(model_dir)}."
        ) from None


def _advice(model_dir: str) -> str:
    return f"pick a new --model_dir, or delete {model_dir} to start over"
