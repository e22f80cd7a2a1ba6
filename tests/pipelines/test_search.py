"""pipelines.search: the neighbour table, retrieval metrics on a hand-made case, queries, errors."""

import json
import math

import numpy as np
import pytest
from scored_parquet import clustered_corpus, scored_table, write_scored_parquet

from pipelines import search as search_cli
from pipelines.embeddings_io import RetrievalInputError
from pipelines.retrieval_index import build_index, load_index, save_index, search
from pipelines.retrieval_metrics import evaluate_retrieval

# Seven unit vectors in the plane at these angles (degrees); G points away from all the others.
ANGLES = {"A": 0, "B": 7, "C": 19, "D": 34, "E": 52, "F": 73, "G": 200}
LABELS = {"A": [1], "B": [2], "C": [1, 3], "D": [3], "E": [1], "F": [4], "G": []}
NAMES_CSV = "label_id,label_name\n1,Dog\n2,\n3,Cat\n4,Fish\n"


@pytest.fixture
def plane_index():
    radians = np.deg2rad(list(ANGLES.values()))
    vectors = np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)  # [7, 2]
    return build_index(vectors, ids=list(ANGLES), labels=list(LABELS.values()))


def test_evaluation_metrics_on_a_hand_made_case(plane_index):
    # k = 3. Neighbours by angular distance (the query excluded), relevance = shares a label:
    #   A: B C D -> 0 1 0, R = 2 (C, E)    P@3 = 1/3, AP@3 = (1/2)/2            = 1/4
    #   B: label 2 is nobody else's, R = 0: skipped
    #   C: B D A -> 0 1 1, R = 3 (A, D, E) P@3 = 2/3, AP@3 = (1/2 + 2/3)/3      = 7/18
    #   D: C E B -> 1 0 0, R = 1 (C)       P@3 = 1/3, AP@3 = 1/min(3, 1)        = 1
    #   E: D F C -> 0 0 1, R = 2 (A, C)    P@3 = 1/3, AP@3 = (1/3)/2            = 1/6
    #   F: label 4 is nobody else's: skipped;  G: no labels: skipped
    quality = evaluate_retrieval(plane_index, k=3, num_queries=None)
    assert quality.num_queries == 4
    assert quality.skipped_unlabeled == 1
    assert quality.skipped_no_relevant == 2
    assert quality.precision_at_k == pytest.approx((1 / 3 + 2 / 3 + 1 / 3 + 1 / 3) / 4)
    assert quality.map_at_k == pytest.approx((1 / 4 + 7 / 18 + 1 + 1 / 6) / 4)
    # A random ranking: R / (N − 1) per query, N = 7.
    assert quality.chance_precision == pytest.approx((2 + 3 + 1 + 2) / 6 / 4)


def test_search_matches_brute_force(plane_index):
    queries = plane_index.vectors[[0, 4]]
    similarities, positions = search(plane_index, queries, 3)
    assert [[plane_index.ids[p] for p in row] for row in positions] == [["A", "B", "C"], ["E", "D", "F"]]
    np.testing.assert_allclose(similarities[1], np.cos(np.deg2rad([0, 18, 21])), atol=1e-6)


@pytest.fixture
def saved_plane_index(plane_index, tmp_path):
    save_index(plane_index, str(tmp_path / "plane"), metadata={"note": "hand-made"})
    (tmp_path / "names.csv").write_text(NAMES_CSV)
    return tmp_path


def test_neighbour_table_with_label_names(saved_plane_index, capsys):
    root = saved_plane_index
    argv = ["--index", str(root / "plane"), "--id", "D", "-k", "3", "--label_names", str(root / "names.csv")]
    assert search_cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "query D  labels: Cat (3)"
    assert lines[1].split() == ["rank", "id", "similarity", "labels"]
    rows = [line.split(None, 3) for line in lines[3:]]
    # D is at 34°: C (15° away), E (18°), B (27°); D itself is left out. Label 2 has a blank name.
    assert rows == [
        ["1", "C", f"{math.cos(math.radians(15)):.4f}", "Dog (1), Cat (3)"],
        ["2", "E", f"{math.cos(math.radians(18)):.4f}", "Dog (1)"],
        ["3", "B", f"{math.cos(math.radians(27)):.4f}", "? (2)"],
    ]


def test_evaluate_cli_prints_and_writes_json(saved_plane_index, capsys):
    root = saved_plane_index
    output = root / "quality.json"
    argv = [
        "--index",
        str(root / "plane"),
        "--evaluate",
        "-k",
        "3",
        "--queries",
        "100",
        "--output",
        str(output),
    ]
    assert search_cli.main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads(output.read_text())
    assert report["map_at_k"] == pytest.approx((1 / 4 + 7 / 18 + 1 + 1 / 6) / 4)
    assert report["precision_at_k"] == pytest.approx(5 / 12)
    assert report["num_queries"] == 4 and report["k"] == 3
    table = dict(line.rsplit(None, 1) for line in out.strip().splitlines()[:-1])
    assert table["precision@3"].strip() == f"{5 / 12:.4f}"
    assert table["mAP@3"].strip() == f"{(1 / 4 + 7 / 18 + 1 + 1 / 6) / 4:.4f}"
    assert out.strip().splitlines()[-1] == f"wrote {output}"


def test_unknown_query_id_is_a_clear_error(saved_plane_index, capsys):
    assert search_cli.main(["--index", str(saved_plane_index / "plane"), "--id", "Z"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: unknown query id 'Z': not among the 7 indexed videos")


def test_missing_index_is_a_clear_error(tmp_path, capsys):
    assert search_cli.main(["--index", str(tmp_path / "nothing"), "--id", "A"]) == 2
    assert "no index at" in capsys.readouterr().err


def _unit_rows(count: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("index_type", ["ivf", "ivfpq"])
def test_approximate_index_round_trip_keeps_results_and_options(tmp_path, index_type):
    vectors = _unit_rows(600, 16)
    ids = [f"v{i}" for i in range(600)]
    built = build_index(
        vectors, ids=ids, labels=[[i % 3] for i in range(600)], index_type=index_type, nlist=8
    )
    # Defaults: nprobe = max(nlist / 64, min(nlist, 32)); pq_m = dim / 4; ivfpq re-ranks 10·k candidates.
    assert built.options.nprobe == 8
    assert (built.options.pq_m, built.options.rerank) == ((4, 10) if index_type == "ivfpq" else (0, 0))
    built.set_nprobe(3)
    save_index(built, str(tmp_path / index_type))
    loaded = load_index(str(tmp_path / index_type))
    assert loaded.options == built.options
    assert loaded.options.nprobe == 3
    expected = search(built, vectors[:20], 5)
    got = search(loaded, vectors[:20], 5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0])
    np.testing.assert_array_equal(loaded.vectors, vectors)
    assert [row.tolist() for row in loaded.labels[:4]] == [[0], [1], [2], [0]]


def test_ivfpq_reranking_restores_exact_similarities():
    vectors = _unit_rows(600, 16, seed=1)
    queries = _unit_rows(20, 16, seed=2)
    index = build_index(vectors, ids=[str(i) for i in range(600)], index_type="ivfpq", nlist=4, nprobe=4)
    brute = queries @ vectors.T  # [20, 600]
    exact = np.argsort(-brute, axis=1)[:, :5]
    similarities, positions = search(index, queries, 5)
    # Every cell visited and 50 candidates re-scored: the true top 5 are among them.
    np.testing.assert_array_equal(positions, exact)
    np.testing.assert_allclose(similarities, np.take_along_axis(brute, exact, axis=1), atol=1e-5)
    index.set_rerank(0)
    approximate, _ = search(index, queries, 5)  # product-quantised scores: visibly off
    assert np.abs(approximate - np.take_along_axis(brute, exact, axis=1)).max() > 1e-3


def test_index_options_are_checked():
    vectors = np.eye(4, dtype=np.float32)
    with pytest.raises(RetrievalInputError, match="--nprobe 9 must be between 1 and --nlist"):
        build_index(vectors, ids=list("abcd"), index_type="ivf", nlist=2, nprobe=9)
    with pytest.raises(RetrievalInputError, match="at least 256 rows"):
        build_index(vectors, ids=list("abcd"), index_type="ivfpq", nlist=1)


@pytest.fixture(scope="module")
def transformed_index(tmp_path_factory):
    from pipelines import index as index_job

    root = tmp_path_factory.mktemp("search")
    embeddings, labels = clustered_corpus(200, 12, seed=3)
    write_scored_parquet(scored_table(embeddings, labels), root / "scores", num_shards=1)
    # A video scored later, not in the index: a slightly moved copy of an indexed one.
    extra = scored_table(embeddings[:1] + 0.01, labels[:1], ids=["new-video"])
    write_scored_parquet(extra, root / "later", num_shards=1)
    index_job.run([f"--embeddings={root}/scores-*.parquet", f"--output={root}/index", "--dim=6"])
    return root


def _table_rows(text: str) -> list[list[str]]:
    return [line.split()[:3] for line in text.strip().splitlines()[3:]]


def test_query_from_parquet_goes_through_the_saved_transform(transformed_index, capsys):
    root = transformed_index
    index_dir = str(root / "index")
    # An indexed video queried from its scored file lists the same neighbours as --id.
    assert search_cli.main(["--index", index_dir, "--id", "vid00007", "-k", "5"]) == 0
    by_id = _table_rows(capsys.readouterr().out)
    scored = str(root / "scores-00000-of-00001.parquet")
    assert (
        search_cli.main(
            ["--index", index_dir, "--query_parquet", scored, "--query_id", "vid00007", "-k", "5"]
        )
        == 0
    )
    by_parquet = _table_rows(capsys.readouterr().out)
    assert [row[:2] for row in by_parquet] == [row[:2] for row in by_id]
    np.testing.assert_allclose(
        [float(row[2]) for row in by_parquet], [float(row[2]) for row in by_id], atol=2e-4
    )
    # A new video close to vid00000 finds it first.
    later = str(root / "later-00000-of-00001.parquet")
    assert (
        search_cli.main(
            ["--index", index_dir, "--query_parquet", later, "--query_id", "new-video", "-k", "3"]
        )
        == 0
    )
    rows = _table_rows(capsys.readouterr().out)
    assert rows[0][1] == "vid00000" and float(rows[0][2]) > 0.99


def test_unknown_id_in_query_parquet_is_a_clear_error(transformed_index, capsys):
    root = transformed_index
    scored = str(root / "scores-00000-of-00001.parquet")
    argv = ["--index", str(root / "index"), "--query_parquet", scored, "--query_id", "nope"]
    assert search_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown query id 'nope': not in ")
