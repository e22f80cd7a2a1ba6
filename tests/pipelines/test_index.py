"""pipelines.index: the tensorflow-transform job (each `--transform`), the index it writes, and its errors.

The transforms are checked against an independent numpy PCA (eigendecomposition of the biased
covariance), up to the sign of each principal component, which PCA leaves free.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scored_parquet import clustered_corpus, scored_table, write_scored_parquet

from pipelines import index as index_job
from pipelines.embedding_transform import TRANSFORMS, transform_embeddings
from pipelines.retrieval_index import load_index, search

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_ROWS, EMBEDDING_DIM, DIM = 300, 16, 8
EPSILON = 1e-6


def _numpy_pca(embeddings: np.ndarray, dim: int, *, whiten: bool) -> np.ndarray:
    """Reference PCA(-whitening) before L2: `(x − μ) V` (`/ √(λ + ε·max λ)`), biased covariance."""
    x = embeddings.astype(np.float64)
    centred = x - x.mean(axis=0)
    covariance = centred.T @ centred / len(x)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:dim]
    projected = centred @ eigenvectors[:, order]
    if whiten:
        variances = eigenvalues[order]
        projected = projected / np.sqrt(variances + EPSILON * variances.max())
    return projected


def _align_signs(got: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`got` with each column's sign flipped to agree with `reference` (PCA's free sign)."""
    signs = np.sign(np.sum(got * reference, axis=0))
    return got * signs


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _read_vectors(output: Path) -> pa.Table:
    files = sorted(output.glob("vectors-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    embeddings, labels = clustered_corpus(NUM_ROWS, EMBEDDING_DIM, seed=1)
    table = scored_table(embeddings, labels)
    root = tmp_path_factory.mktemp("index")
    write_scored_parquet(table, root / "scores", num_shards=2, row_group_size=64)
    return root, embeddings, labels, table.column("id").to_pylist()


@pytest.fixture(scope="module")
def whitened_index(corpus):
    root, *_ = corpus
    output = root / "whitened"
    metadata = index_job.run(
        [
            f"--embeddings={root}/scores-*.parquet",
            f"--output={output}",
            f"--dim={DIM}",
            "--transform=whiten",
            "--keep_projected",
            "--num_shards=2",
        ]
    )
    return output, metadata


def test_whitened_vectors_match_numpy_pca_whitening(corpus, whitened_index):
    _, embeddings, _, ids = corpus
    output, _ = whitened_index
    table = _read_vectors(output)
    by_id = {video_id: row for row, video_id in enumerate(table.column("id").to_pylist())}
    rows = [by_id[video_id] for video_id in ids]
    projected = np.array(table.column("projected").to_pylist())[rows]  # [N, DIM]
    vectors = np.array(table.column("vector").to_pylist())[rows]  # [N, DIM]

    # Whitened coordinates are decorrelated with unit variance (ε only nudges the smallest ones).
    covariance = np.cov(projected, rowvar=False, bias=True)
    np.testing.assert_allclose(covariance, np.eye(DIM), atol=2e-4)

    reference = _numpy_pca(embeddings, DIM, whiten=True)
    np.testing.assert_allclose(_align_signs(projected, reference), reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_align_signs(vectors, reference), _normalize(reference), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_index_json_and_round_trip(corpus, whitened_index):
    root, _, labels, ids = corpus
    output, metadata = whitened_index
    on_disk = json.loads((output / "index.json").read_text())
    assert on_disk == metadata
    assert on_disk["num_vectors"] == NUM_ROWS
    assert (on_disk["embedding_dim"], on_disk["dim"]) == (EMBEDDING_DIM, DIM)
    assert on_disk["whiten"] is True
    assert on_disk["index"]["index_type"] == "flat"
    assert on_disk["model_versions"] == ["test-model@0000000"]
    assert on_disk["source"]["files"] == [str(p) for p in sorted(root.glob("scores-*.parquet"))]
    assert on_disk["timings_s"]["total"] > 0
    assert len(list(output.glob("vectors-*-of-00002.parquet"))) == 2
    assert (output / "transform_fn").is_dir()
    assert not (output / "tmp").exists()

    index = load_index(str(output))
    assert sorted(index.ids) == sorted(ids)
    labels_by_id = dict(zip(ids, labels, strict=True))
    for position in range(0, NUM_ROWS, 37):
        assert index.labels[position].tolist() == labels_by_id[index.ids[position]]

    # The loaded exact index ranks like a brute-force inner product over the written vectors.
    table = _read_vectors(output)
    written = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    written_ids = np.array(table.column("id").to_pylist(), dtype=object)
    queries = written[:5]
    similarities, positions = search(index, queries, 4)
    brute = queries @ written.T  # [5, N]
    expected = np.argsort(-brute, axis=1)[:, :4]
    assert (index.ids[positions] == written_ids[expected]).all()
    np.testing.assert_allclose(similarities, np.take_along_axis(brute, expected, axis=1), atol=1e-5)
    assert (index.ids[positions[:, 0]] == written_ids[:5]).all()  # each vector finds itself first


def test_query_through_saved_transform_equals_indexed_vector(corpus, whitened_index):
    _, embeddings, _, ids = corpus
    output, _ = whitened_index
    index = load_index(str(output))
    rows = [0, 17, 299]
    transformed = transform_embeddings(str(output), embeddings[rows])  # [3, DIM]
    indexed = index.vectors[[index.position(ids[row]) for row in rows]]
    np.testing.assert_allclose(transformed, indexed, atol=1e-5)


def test_unwhitened_ivf_index_from_plain_list_embeddings(tmp_path):
    embeddings, labels = clustered_corpus(NUM_ROWS, EMBEDDING_DIM, seed=2)
    write_scored_parquet(scored_table(embeddings, labels, fixed_size=False), tmp_path / "plain", num_shards=1)
    output = tmp_path / "index"
    metadata = index_job.run(
        [
            f"--embeddings={tmp_path}/plain-*.parquet",
            f"--output={output}",
            "--dim=4",
            "--no-whiten",
            "--index_type=ivf",
            "--nlist=4",
            "--nprobe=4",
        ]
    )
    assert metadata["whiten"] is False
    assert metadata["transform"] == "pca"
    assert metadata["index"] == {"index_type": "ivf", "nlist": 4, "nprobe": 4, "pq_m": 0, "rerank": 0}

    index = load_index(str(output))
    ids = [f"vid{i:05d}" for i in range(NUM_ROWS)]
    vectors = index.vectors[[index.position(video_id) for video_id in ids]]
    reference = _normalize(_numpy_pca(embeddings, 4, whiten=False))
    np.testing.assert_allclose(_align_signs(vectors, reference), reference, atol=1e-5)
    # nprobe = nlist visits every cell: the IVF index then answers exactly.
    _, positions = search(index, index.vectors[:10], 5)
    expected = np.argsort(-(index.vectors[:10] @ index.vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(positions, expected)


def _reference_vectors(embeddings: np.ndarray, transform: str, dim: int) -> np.ndarray:
    """What each transform should write, in numpy (PCA signs free; see `_align_signs`)."""
    if transform == "raw":
        return _normalize(embeddings.astype(np.float64))
    projected = _numpy_pca(embeddings, dim, whiten=transform == "whiten")
    if transform == "pca_power":
        projected = np.sign(projected) * np.sqrt(np.abs(projected))
    return _normalize(projected)


@pytest.fixture(scope="module")
def index_per_transform(corpus):
    """One small index per transform, built once; the default's without a --transform flag."""
    root, *_ = corpus
    built = {}
    for transform in TRANSFORMS:
        output = root / f"transform_{transform}"
        flags = [] if transform == index_job.DEFAULT_TRANSFORM else [f"--transform={transform}"]
        built[transform] = (
            output,
            index_job.run(
                [f"--embeddings={root}/scores-*.parquet", f"--output={output}", f"--dim={DIM}", *flags]
            ),
        )
    return built


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_each_transform_round_trips_index_then_search(corpus, index_per_transform, transform):
    _, embeddings, _, ids = corpus
    output, metadata = index_per_transform[transform]
    dim = EMBEDDING_DIM if transform == "raw" else DIM
    assert metadata["transform"] == transform
    assert metadata["whiten"] is (transform == "whiten")
    assert (metadata["embedding_dim"], metadata["dim"]) == (EMBEDDING_DIM, dim)

    index = load_index(str(output))
    rows = [index.position(video_id) for video_id in ids]
    vectors = index.vectors[rows]  # [N, dim] in corpus order
    reference = _reference_vectors(embeddings, transform, DIM)
    aligned = vectors if transform == "raw" else _align_signs(vectors, reference)
    np.testing.assert_allclose(aligned, reference, atol=2e-5)

    # Every stored vector finds itself first...
    _, positions = search(index, index.vectors, 1)
    np.testing.assert_array_equal(positions[:, 0], np.arange(NUM_ROWS))
    # ...and so does a query embedding passed through the index's saved transform, as search does.
    queries = [0, 17, 299]
    transformed = transform_embeddings(str(output), embeddings[queries])  # [3, dim]
    np.testing.assert_allclose(transformed, index.vectors[[rows[q] for q in queries]], atol=1e-5)
    _, positions = search(index, transformed, 1)
    assert list(index.ids[positions[:, 0]]) == [ids[q] for q in queries]


def test_default_transform_is_the_documented_one(capsys):
    """BENCHMARKS.md ("Retrieval index") measured the transforms; README and --help name the winner."""
    default = index_job.DEFAULT_TRANSFORM
    assert default in TRANSFORMS
    assert index_job.IndexConfig(embeddings="e", output="o").transform == default
    config, _ = index_job.parse_known_args(["--embeddings=e", "--output=o"])
    assert config.transform == default
    with pytest.raises(SystemExit):
        index_job.parse_known_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default {default}:" in help_text
    for transform in TRANSFORMS:
        assert f" {transform} " in help_text
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"`--transform {default}`" in readme


@pytest.mark.parametrize(
    ("flags", "transform"),
    [(["--whiten"], "whiten"), (["--no-whiten"], "pca"), (["--no-whiten", "--transform=pca"], "pca")],
)
def test_deprecated_whiten_flags_map_to_transforms(flags, transform):
    config, _ = index_job.parse_known_args(["--embeddings=e", "--output=o", *flags])
    assert config.transform == transform


def test_whiten_flag_contradicting_transform_is_refused(capsys):
    with pytest.raises(SystemExit):
        index_job.parse_known_args(["--embeddings=e", "--output=o", "--whiten", "--transform=raw"])
    assert "--whiten (= --transform whiten) contradicts --transform raw" in capsys.readouterr().err


def _one_line_error(capfd, argv) -> str:
    assert index_job.main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: ")
    return err[-1]


def test_no_matching_files_is_a_clear_error(tmp_path, capfd):
    message = _one_line_error(
        capfd, [f"--embeddings={tmp_path}/nothing-*.parquet", f"--output={tmp_path}/out"]
    )
    assert "no Parquet files match" in message and "nothing-*.parquet" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("rows", "dim", "expected"),
    [
        (50, 17, "--dim 17 is larger than the embedding length 16"),
        (6, 8, "--dim 8 is larger than the number of rows allows: 6 rows"),
    ],
)
def test_dim_too_large_is_a_clear_error(tmp_path, capfd, rows, dim, expected):
    embeddings, labels = clustered_corpus(rows, EMBEDDING_DIM)
    write_scored_parquet(scored_table(embeddings, labels), tmp_path / "s", num_shards=1)
    message = _one_line_error(
        capfd, [f"--embeddings={tmp_path}/s-*.parquet", f"--output={tmp_path}/out", f"--dim={dim}"]
    )
    assert expected in message


def test_embedding_length_differing_between_rows_is_a_clear_error(tmp_path):
    """Found while the pipeline reads the rows; the CLI still prints one line and no traceback."""
    embeddings, labels = clustered_corpus(40, EMBEDDING_DIM)
    table = scored_table(embeddings, labels, fixed_size=False)
    rows = table.column("embedding").to_pylist()
    rows[23] = rows[23][:-3]  # one video scored by another model
    table = table.set_column(
        table.schema.get_field_index("embedding"), "embedding", pa.array(rows, pa.list_(pa.float32()))
    )
    write_scored_parquet(table, tmp_path / "mixed", num_shards=1)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.index",
            f"--embeddings={tmp_path}/mixed-*.parquet",
            f"--output={tmp_path}/out",
            "--dim=4",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: embedding length differs between rows: video 'vid00023'")
    assert "has length 13, expected 16" in last


_KERAS_MODEL_ROUND_TRIP = """
import os
import sys

import numpy as np
import keras
import nextvlad

inputs = {
    "rgb": np.random.default_rng(0).normal(size=(2, 5, 1024)).astype("float32"),
    "audio": np.random.default_rng(1).normal(size=(2, 5, 128)).astype("float32"),
    "num_frames": np.array([5, 3], dtype="int32"),
}


def save_model(path):
    model = nextvlad.build_model(
        nextvlad.ModelConfig(num_classes=7, cluster_size=4, groups=2, hidden_size=16, gating_reduction=4)
    )
    model.save(path)
    return model.predict(inputs, verbose=0)["predictions"]


def check_loads(path, expected):
    import tensorflow as tf

    assert tf.keras.version().startswith("3."), tf.keras.version()
    for loaded in (keras.saving.load_model(path), tf.keras.models.load_model(path)):
        np.testing.assert_allclose(loaded.predict(inputs, verbose=0)["predictions"], expected, atol=1e-6)
"""

# Each order imports the retrieval modules, runs the index job (which imports tensorflow_transform, the
# module that would set TF_USE_LEGACY_KERAS=1 and turn tf.keras into Keras 2) and queries through the
# saved transform, then saves or loads a Keras 3 model (docs/design.md, "Known traps of this stack").
_IMPORT_ORDERS = {
    # Keras and a model load first, the retrieval modules after, then the model again: the worst order.
    "keras_first": """
expected = save_model(MODEL)
check_loads(MODEL, expected)
import pipelines.search, pipelines.index, pipelines.embedding_transform, pipelines.retrieval_index
CHECK_IMPORTS
RUN_INDEX
check_loads(MODEL, expected)
""",
    "retrieval_first": """
import pipelines.index, pipelines.search, pipelines.embeddings_io, pipelines.retrieval_metrics
CHECK_IMPORTS
RUN_INDEX
expected = save_model(MODEL)
check_loads(MODEL, expected)
""",
}


@pytest.mark.parametrize("order", list(_IMPORT_ORDERS))
def test_retrieval_modules_keep_keras_3_model_loading_in_any_import_order(tmp_path, order):
    embeddings, labels = clustered_corpus(60, EMBEDDING_DIM, seed=4)
    write_scored_parquet(scored_table(embeddings, labels), tmp_path / "s", num_shards=1)
    np.save(tmp_path / "queries.npy", embeddings[:2])
    check_imports = textwrap.dedent(
        """
        # Importing the library modules changes nothing process-wide and loads no tensorflow-transform.
        assert "TF_USE_LEGACY_KERAS" not in os.environ, os.environ["TF_USE_LEGACY_KERAS"]
        assert "tensorflow_transform" not in sys.modules
        """
    )
    run_index = textwrap.dedent(
        f"""
        from pipelines.embedding_transform import transform_embeddings
        from pipelines.retrieval_index import load_index, search
        pipelines.index.run(["--embeddings={tmp_path}/s-*.parquet", "--output={tmp_path}/index", "--dim=4"])
        index = load_index("{tmp_path}/index")
        queries = transform_embeddings("{tmp_path}/index", np.load("{tmp_path}/queries.npy"))
        _, positions = search(index, queries, 1)
        assert list(index.ids[positions[:, 0]]) == ["vid00000", "vid00001"], index.ids[positions[:, 0]]
        assert os.environ["TF_USE_LEGACY_KERAS"] == "0", os.environ["TF_USE_LEGACY_KERAS"]
        """
    )
    script = (
        _KERAS_MODEL_ROUND_TRIP
        + f"MODEL = {str(tmp_path / 'model.keras')!r}\n"
        + _IMPORT_ORDERS[order].replace("CHECK_IMPORTS", check_imports).replace("RUN_INDEX", run_index)
        + 'print("loaded")\n'
    )
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = "tensorflow"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("loaded")
