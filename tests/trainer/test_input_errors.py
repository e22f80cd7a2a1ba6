"""A bad record that the checks before training did not sample stops training with a message that names
the flag and says what to pass."""

import numpy as np
import pytest

from nextvlad import ModelConfig, record_writer, records
from trainer import training
from trainer.config import TrainConfig


def test_a_label_outside_the_classes_found_while_training_says_to_pass_num_classes(tmp_path):
    rng = np.random.default_rng(0)
    data = []
    for i in range(40):
        labels = [12] if i == 30 else [int(i % 5)]  # record 30 uses a 13th class
        data.append(
            record_writer.frame_example_bytes(
                f"v{i}",
                labels,
                rng.integers(0, 256, (4, 1024), dtype=np.uint8),
                rng.integers(0, 256, (4, 128), dtype=np.uint8),
            )
        )
    records.write_tfrecords(str(tmp_path / "train.tfrecord"), data)
    config = ModelConfig.preset(
        "demo", num_classes=5, cluster_size=4, groups=2, hidden_size=16, gating_reduction=4
    )
    train_config = TrainConfig(
        train_data=str(tmp_path / "train.tfrecord"),
        model_dir=str(tmp_path / "model"),
        batch_size=8,
        max_steps=10,
        check_records=0,  # the checks before training would catch it; the input pipeline must too
        shuffle_buffer=1,
        prior_records=0,  # counting the label prior would meet the record first
    )
    with pytest.raises(ValueError, match=r"--train_data: .*5-class model.*pass --num_classes"):
        training.train(config, train_config)
