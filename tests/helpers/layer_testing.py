"""A shared check for every layer: config round-trip, symbolic and eager calls, one `fit` step."""

from __future__ import annotations

import keras
import numpy as np


def run_layer_checks(layer_cls, init_kwargs: dict, inputs: dict, *, expected_shape: tuple) -> None:
    """Asserts the behaviours every registered layer of the project must have.

    Args:
        layer_cls: the layer class.
        init_kwargs: constructor arguments.
        inputs: call arguments as numpy arrays (the first is the main input).
        expected_shape: the output shape for those inputs.
    """
    layer = layer_cls(**init_kwargs)
    eager = layer(**inputs)
    assert tuple(eager.shape) == expected_shape

    # Config round-trip, through the serialization registry as a `.keras` file would.
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is layer_cls
    assert clone.get_config() == layer.get_config()
    # Same weights → same outputs.
    clone(**inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(**inputs)), keras.ops.convert_to_numpy(eager), rtol=1e-5, atol=1e-6
    )

    # Symbolic call in a functional model, then one training step must change the weights.
    symbolic = {
        name: keras.Input(value.shape[1:], dtype=str(value.dtype), name=name)
        for name, value in inputs.items()
    }
    fresh = layer_cls(**init_kwargs)
    output = fresh(**symbolic)
    assert tuple(output.shape[1:]) == expected_shape[1:]
    model = keras.Model(symbolic, output)
    if not model.trainable_weights:  # e.g. pooling without parameters: fit must still run
        model.compile(optimizer="sgd", loss="mse")
        model.fit(
            inputs, np.ones(expected_shape, "float32"), epochs=1, batch_size=expected_shape[0], verbose=0
        )
        return
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [np.array(w) for w in model.trainable_weights]
    model.fit(inputs, np.ones(expected_shape, "float32"), epochs=1, batch_size=expected_shape[0], verbose=0)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True)), "fit changed no weight"
