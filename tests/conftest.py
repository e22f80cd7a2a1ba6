"""Shared pytest set-up: quiet TensorFlow, a deterministic Keras, and the shared real-data folder."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# tensorflow_transform flips this to 1 on import, which breaks Keras 3 model loading (docs/design.md,
# "Known traps of this stack").
os.environ.setdefault("TF_USE_LEGACY_KERAS", "0")

import pytest  # noqa: E402

# Shared test helpers are plain modules in tests/helpers (pytest runs with --import-mode=importlib,
# so tests/ itself is not on sys.path, where tests/nextvlad would shadow the package).
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real YouTube-8M sample beside the repository; tests using it skip when it is absent."""
    if not (SHARED_DATA / "yt8m-2018-video-level").is_dir():
        pytest.skip(f"real YouTube-8M sample not found at {SHARED_DATA}")
    return SHARED_DATA
