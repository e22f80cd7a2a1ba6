"""The model a training run builds: the network with its loss and optimizer, its initial weights, and the
float32 serving model it exports."""

from __future__ import annotations

import logging
from typing import Any

from nextvlad.config import ModelConfig
from trainer.config import TrainConfig, learning_rate_schedule

logger = logging.getLogger(__name__)


def build_training_model(
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    total_steps: int,
    label_prior: Any = None,
    rgb_scale: Any = None,
) -> Any:
    """The network wrapped with its loss (`trainer.losses.TrainingModel`), compiled with Adam.

    Adam on `learning_rate_schedule(train_config, total_steps)`, gradients clipped to norm `clipnorm` per
    variable; the optimizer's variables are created, so a checkpoint can be loaded into it right away.
    Under a `mixed_float16` global policy Keras wraps the optimizer in a `LossScaleOptimizer`. Call inside
    a `tf.distribute` scope to distribute it.

    Args:
        model_config: the network.
        train_config: optimiser settings (`schedule`, `learning_rate`, `warmup_fraction`, `lr_decay_rate`,
            `clipnorm`, `label_smoothing`).
        total_steps: the run's length in steps, over which the schedule runs.
        label_prior: class frequencies (`[C]`, or one for all) for every classifier's initial bias (see
            `trainer.prior`); None keeps a zero bias (0.5 for every class).
        rgb_scale: the reverse-whitening scale, stored in the model; required when
            `model_config.reverse_whitening`.

    Returns:
        The compiled `TrainingModel`; its `network` attribute is the model from `build_model`.
    """
    import keras

    from nextvlad.model import build_model
    from trainer.losses import TrainingModel
    from trainer.prior import set_classifier_prior

    network = build_model(model_config, rgb_scale=rgb_scale)
    if label_prior is not None:
        set_classifier_prior(network, label_prior)
    model = TrainingModel(
        network, model_config, label_smoothing=train_config.label_smoothing, name="training"
    )
    schedule = learning_rate_schedule(train_config, total_steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=train_config.clipnorm))
    model.optimizer.build(model.trainable_variables)
    return model


def load_initial_weights(network: Any, init_model: str) -> None:
    """Copies a trained model's weights into `network`, layer by layer (matched by name and shape).

    Args:
        network: a model from `nextvlad.build_model` of the same `ModelConfig` as `init_model`.
        init_model: the trained model's model_dir (or its `.keras` file).

    Raises:
        ValueError: a layer with weights is missing from the trained model or has other shapes.
    """
    from nextvlad.serving import load_model, resolve_model_file

    source = load_model(resolve_model_file(init_model))
    layers = {layer.name: layer for layer in source.layers}
    for layer in network.layers:
        if not layer.weights:
            continue
        other = layers.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is None or [tuple(w.shape) for w in other.weights] != shapes:
            raise ValueError(
                f"--init_model {init_model}: its layer {layer.name!r} is missing or has other weight shapes "
                f"than this model's {shapes}; the model must be built from the init model's config.json"
            )
        layer.set_weights(other.get_weights())
    logger.info("initial weights from %s", init_model)


def float32_serving_model(network: Any, config: ModelConfig) -> Any:
    """The serving model in float32 (a mixed-precision network is rebuilt and its weights copied)."""
    import keras
    import numpy as np

    from nextvlad.model import build_model, serving_model

    if keras.mixed_precision.global_policy().name == "float32":
        return serving_model(network)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        # The reverse-whitening scale is a weight: copied below with the others.
        placeholder = np.ones(config.rgb_size, np.float32) if config.reverse_whitening else None
        fresh = build_model(config, rgb_scale=placeholder, name=network.name)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    fresh.set_weights(network.get_weights())
    return serving_model(fresh)
