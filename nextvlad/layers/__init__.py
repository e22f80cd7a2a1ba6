"""Keras layers of the NeXtVLAD model family, all registered for `.keras` serialization."""

from nextvlad.layers.context_gating import ContextGating
from nextvlad.layers.frames import FrameMask, MaskedMeanPooling
from nextvlad.layers.logistic_classifier import LogisticClassifier
from nextvlad.layers.moe_classifier import MoEClassifier
from nextvlad.layers.netvlad import NetVLAD
from nextvlad.layers.nextvlad import NeXtVLAD
from nextvlad.layers.preprocessing import FramePreprocessing, VideoPreprocessing

__all__ = [
    "ContextGating",
    "FrameMask",
    "FramePreprocessing",
    "LogisticClassifier",
    "MaskedMeanPooling",
    "MoEClassifier",
    "NeXtVLAD",
    "NetVLAD",
    "VideoPreprocessing",
]
