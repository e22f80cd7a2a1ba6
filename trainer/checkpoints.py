"""Crash-safe training checkpoints: model weights plus optimizer state, written atomically.

Layout under `model_dir/checkpoints/`:

- `ckpt-00001234.weights.h5`: every variable of the training model, the optimizer's included (its
  iteration count, Adam moments and loss scale), in Keras's weights format;
- `checkpoint.json`: `{"step", "iterations", "epoch", "file"}` of the newest complete checkpoint.

A checkpoint is written to a temporary name and renamed into place, then `checkpoint.json` is
replaced the same way, so a process killed at any moment (`kill -9`) leaves either the previous
checkpoint or the new one, never a torn file. Local paths and `gs://` both work (`tf.io.gfile`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

logger = logging.getLogger(__name__)

POINTER = "checkpoint.json"
_FILE_RE = re.compile(r"^ckpt-(\d+)\.weights\.h5$")


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint is and how far training had got.

    Attributes:
        step: global steps (training batches) done.
        epoch: epochs completed when the checkpoint was written.
        path: the weights file.
        iterations: the optimizer's iteration count saved in the file (it can trail `step` under
            mixed_float16, which skips updates whose gradients overflow); None when unknown.
    """

    step: int
    epoch: int
    path: str
    iterations: int | None = None


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


class CheckpointManager:
    """Saves and restores the training model (weights and optimizer) in a directory.

    Args:
        directory: checkpoint folder (created on first save), local or gs://.
        keep: newest checkpoints kept on disk; older ones are deleted after each save.
        writer: False on tf.distribute workers other than the chief: they restore but never write.
    """

    def __init__(self, directory: str, *, keep: int = 2, writer: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}; at least one checkpoint must be kept")
        self.directory = directory
        self.keep = keep
        self.writer = writer

    def _files(self) -> list[tuple[int, str]]:
        if not tf.io.gfile.isdir(self.directory):
            return []
        found = []
        for name in tf.io.gfile.listdir(self.directory):
            match = _FILE_RE.match(name.rstrip("/"))
            if match:
                found.append((int(match.group(1)), _join(self.directory, name)))
        return sorted(found)

    def exists(self) -> bool:
        """Whether any complete checkpoint is present."""
        return bool(self._files())

    def latest(self) -> CheckpointInfo | None:
        """The newest complete checkpoint, or None when there is none."""
        pointer = _join(self.directory, POINTER)
        if tf.io.gfile.exists(pointer):
            try:
                with tf.io.gfile.GFile(pointer, "r") as f:
                    values = json.load(f)
                path = _join(self.directory, values["file"])
                if tf.io.gfile.exists(path):
                    return CheckpointInfo(
                        step=int(values["step"]),
                        epoch=int(values["epoch"]),
                        path=path,
                        iterations=values.get("iterations"),
                    )
            except (ValueError, KeyError, OSError) as e:
                logger.warning("ignoring unreadable %s (%s); using the newest checkpoint file", pointer, e)
        files = self._files()
        if not files:
            return None
        # The pointer is written after the rename: a kill in between leaves a complete file without it.
        step, path = files[-1]
        return CheckpointInfo(step=step, epoch=-1, path=path)

    def save(
        self, model: Any, *, step: int, epoch: int, iterations: int | None = None
    ) -> CheckpointInfo | None:
        """Writes a checkpoint of `model` (and its optimizer) at global step `step`.

        Args:
            model: the compiled training model.
            step: global step (training batches done).
            epoch: see `CheckpointInfo.epoch`.
            iterations: the optimizer's iteration count, recorded to verify restores.

        Returns:
            The checkpoint written, or None on non-writer workers.
        """
        if not self.writer:
            return None
        tf.io.gfile.makedirs(self.directory)
        name = f"ckpt-{step:08d}.weights.h5"
        path = _join(self.directory, name)
        tmp = _join(self.directory, f"tmp-{name}")  # Keras insists on the .weights.h5 suffix
        model.save_weights(tmp, overwrite=True)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        _write_text_atomic(
            _join(self.directory, POINTER),
            json.dumps({"step": step, "iterations": iterations, "epoch": epoch, "file": name}) + "\n",
        )
        for _, old in self._files()[: -self.keep]:
            tf.io.gfile.remove(old)
        for leftover in tf.io.gfile.glob(_join(self.directory, "tmp-ckpt-*")):  # from a killed save
            tf.io.gfile.remove(leftover)
        logger.debug("checkpoint at step %d: %s", step, path)
        return CheckpointInfo(step=step, epoch=epoch, path=path, iterations=iterations)

    def restore(self, model: Any) -> CheckpointInfo | None:
        """Loads the newest checkpoint into `model` (whose optimizer must be built); None if there is none."""
        info = self.latest()
        if info is None:
            return None
        model.load_weights(info.path)
        return info
