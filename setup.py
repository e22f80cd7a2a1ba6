"""Package metadata and the pinned stack (see README for the two commands that use it)."""

from setuptools import find_packages, setup

# The stack is pinned as a whole: Beam 2.77, TensorFlow 2.21 and tensorflow-transform 1.21 are
# released against each other, and Beam 2.77 refuses pyarrow 26.
INSTALL_REQUIRES = [
    "tensorflow==2.21.*",
    "keras>=3.10,<4",
    "apache-beam[gcp]==2.77.*",
    "tensorflow-transform==1.21.*",
    "pyarrow>=14,<26",
    "numpy",
    "pandas",
    "faiss-cpu",
    "matplotlib",
    "tqdm",
    # Video decoding for pipelines.extract: its wheels carry FFmpeg (H.264, VP9, AAC, Opus, ...).
    "av==18.1.*",
]

EXTRAS_REQUIRE = {
    # Everything the test suite needs, including the local stand-ins for GCS and BigQuery and a
    # second and third Keras backend (PyTorch CPU build, JAX on CPU) for the cross-backend tests.
    "test": [
        "pytest",
        "ruff",
        "torch==2.13.0",
        "jax[cpu]==0.10.2",
        "gcp-storage-emulator",
        "bqemulator==1.4.0",
        "duckdb==1.5.5",
        "duckdb-extension-spatial==1.5.5",
        "duckdb-extension-avro==1.5.5",
        "testcontainers",
        "keras-hub==0.32.*",
        # The FFmpeg command-line binary, the reference the extraction benchmark and tests compare against.
        "imageio-ffmpeg==0.8.*",
    ],
    # keras-hub image backbones by preset name for pipelines.extract --backbone.
    "hub": ["keras-hub==0.32.*"],
    # GPU training/serving with TensorFlow (Dataflow worker image, Vertex AI).
    "gpu": ["tensorflow[and-cuda]==2.21.*"],
}

setup(
    name="nextvlad",
    version="0.1.0",
    description="NeXtVLAD video pooling: Keras models, trainer and Apache Beam pipelines at corpus scale",
    python_requires="==3.11.*",
    packages=find_packages(
        include=["nextvlad", "nextvlad.*", "trainer", "trainer.*", "pipelines", "pipelines.*"]
    ),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "nextvlad-synthetic=nextvlad.synthetic:main",
        ],
    },
)
