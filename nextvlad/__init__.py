"""NeXtVLAD video pooling: model configuration, Keras layers and model builders.

The YouTube-8M format (`nextvlad.yt8m`), the challenge metrics (`nextvlad.metrics`) and the
synthetic corpus generator (`nextvlad.synthetic`) are submodules, imported on demand so that
importing the model library does not pull in TensorFlow's data stack.
"""

from nextvlad import layers
from nextvlad.config import PRESETS, ModelConfig
from nextvlad.model import build_model, count_trainable_parameters, model_inputs, serving_model

__all__ = [
    "PRESETS",
    "ModelConfig",
    "build_model",
    "count_trainable_parameters",
    "layers",
    "model_inputs",
    "serving_model",
]
__version__ = "0.1.0"
