"""The label prior: each class's frequency in the training records, for the classifier's initial bias.

An untrained logistic classifier with a zero bias predicts 0.5 for each of 3,862 classes, a first
cross-entropy of ~2,700 per video (~1,600 for the 2-expert MoE), and spends its first steps learning
that almost every class is absent. Starting every class at its own frequency
(`LogisticClassifier.set_prior`, `MoEClassifier.set_prior`) removes that phase: the first cross-entropy
is ~17 per video on YouTube-8M (`benchmarks/bench_first_loss.py`, BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Used when no training records are read (`--prior_records 0`): YouTube-8M averages ~3 labels a video.
DEFAULT_LABELS_PER_VIDEO = 3.0


def mean_frequency_prior(num_classes: int, *, labels_per_video: float = DEFAULT_LABELS_PER_VIDEO) -> float:
    """The same frequency for every class, when the data has not been read."""
    return min(0.5, labels_per_video / num_classes)


def label_prior(
    files: Sequence[str], *, num_classes: int, max_records: int, batch_size: int = 1024
) -> tuple[np.ndarray, int]:
    """Each class's frequency in (up to `max_records` of) the records of `files`.

    Reads only the `labels` feature. A frame-level `SequenceExample` keeps it in its context, which has the
    same field number as an `Example`'s features, so one parser reads both kinds and skips the frames
    unparsed. Files are interleaved, so a capped count samples all of them. A class never seen gets half
    a count (add-one-half smoothing), so its log-odds stay finite.

    Args:
        files: TFRecord paths (local or gs://).
        num_classes: C; larger label ids raise (as the training input would).
        max_records: stop after this many records.
        batch_size: records parsed at once.

    Returns:
        (`[C]` float64 frequencies, number of records read).
    """
    import tensorflow as tf

    files = list(files)
    dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(16, len(files)), num_parallel_calls=tf.data.AUTOTUNE
    )
    spec = {"labels": tf.io.VarLenFeature(tf.int64)}
    dataset = (
        dataset.take(max_records).batch(batch_size).map(lambda s: tf.io.parse_example(s, spec)["labels"])
    )
    counts = np.zeros(num_classes, "float64")
    records = 0
    for labels in dataset:
        ids = labels.values.numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(
                f"label ids {sorted(set(ids[(ids < 0) | (ids >= num_classes)].tolist()))[:5]} are outside "
                f"[0, {num_classes}); pass the right --num_classes"
            )
        counts += np.bincount(ids, minlength=num_classes)
        records += int(labels.dense_shape[0])
    return (counts + 0.5) / (records + 1.0), records


def set_classifier_prior(network: Any, prior: Any) -> int:
    """Sets the bias of every classifier of `network` (every branch of a mixture) from `prior`.

    A mixture's logit is a gate-weighted average of the branches' logits, so branches that all start at
    the prior's log-odds start the mixture there too.

    Returns:
        The number of classifiers set.
    """
    from nextvlad.layers import LogisticClassifier, MoEClassifier

    classifiers = [
        layer for layer in network.layers if isinstance(layer, (LogisticClassifier, MoEClassifier))
    ]
    for layer in classifiers:
        layer.set_prior(prior)
    return len(classifiers)
