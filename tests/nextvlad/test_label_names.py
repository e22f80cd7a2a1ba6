"""`--label_names` accepts the dataset's own `vocabulary.csv` in every command (train, evaluate, search),
read by one parser that needs no TensorFlow."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scoring_data import good_frame_records, save_tiny_model, write_tfrecords

from nextvlad import records
from pipelines import search as search_cli
from pipelines.retrieval_index import build_index, save_index
from trainer import evaluate as ev
from trainer.training_data import label_names_csv

REPO_ROOT = Path(__file__).resolve().parents[2]

# The dataset's vocabulary.csv layout: quoted fields holding commas (and a newline) in the description.
VOCABULARY = (
    "Index,TrainVideoCount,KnowledgeGraphId,Name,WikiUrl,Vertical1,Vertical2,Vertical3,WikiDescription\n"
    '0,378135,/m/03bt1gh,Game,https://en.wikipedia.org/wiki/Game,Games,,,"A game is structured play, '
    'usually undertaken for enjoyment."\n'
    '1,233311,/m/01mw1,"Cars, trucks",https://x/Car,Autos,,,"A car is a wheeled,\nmotor vehicle."\n'
    "2,3,/m/0abc,,https://x/None,Arts & Entertainment,,,\n"
    '3,197,/m/04rlf,Music,https://x/Music,Arts & Entertainment,,,"Music, an art form"\n'
    "4,150,/m/02wbm,Food,https://x/Food,Food & Drink,,,Food\n"
    "5,120,/m/026bk,Dance,https://x/Dance,Arts & Entertainment,,,Dance\n"
    "6,90,/m/01yrx,Cats,https://x/Cat,Pets & Animals,,,\n"
)
NAMES = {0: "Game", 1: "Cars, trucks", 2: "", 3: "Music", 4: "Food", 5: "Dance", 6: "Cats"}


@pytest.fixture
def vocabulary(tmp_path) -> Path:
    path = tmp_path / "vocabulary.csv"
    path.write_text(VOCABULARY)
    return path


def test_the_parser_reads_both_layouts_without_tensorflow(vocabulary, tmp_path):
    plain = tmp_path / "label_names.csv"
    plain.write_text('label_id,label_name\n0,Game\n1,"Cars, trucks"\n2,\n3,Music\n4,Food\n5,Dance\n6,Cats\n')
    code = (
        "import sys; from nextvlad import records; "
        "print(records.read_label_names(sys.argv[1]) == records.read_label_names(sys.argv[2]), "
        "'tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(vocabulary), str(plain)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "KERAS_BACKEND": "torch"},
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.stdout.split() == ["True", "False"], result.stderr[-2000:]
    assert records.read_label_names(str(vocabulary)) == NAMES


def test_bad_label_name_files_name_the_file_and_the_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.csv.*vocabulary.csv"):
        records.read_label_names(str(tmp_path / "no-such.csv"))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,name\n0,Game\n")
    with pytest.raises(ValueError, match=r"wrong.csv has columns \['id', 'name'\].*label_id,label_name"):
        records.read_label_names(str(wrong))


def test_train_keeps_a_vocabulary_as_label_id_label_name_csv(vocabulary):
    text = label_names_csv(str(vocabulary), num_classes=7)
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["label_id", "label_name"]
    assert {int(i): name for i, name in rows[1:]} == NAMES
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        label_names_csv(str(vocabulary), num_classes=5)


def test_evaluate_names_classes_from_a_vocabulary(vocabulary, tmp_path):
    model = save_tiny_model(tmp_path / "model" / "model.keras")
    data = write_tfrecords(
        tmp_path / "data.tfrecord", good_frame_records(np.random.default_rng(2), 12, prefix="e").values()
    )
    output = tmp_path / "report" / "eval.json"
    ev.evaluate(str(model), str(data), output=str(output), label_names=str(vocabulary), progress=False)
    with open(output.parent / "eval_per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["class_id"]), r["name"]) for r in rows] == sorted(NAMES.items())


def test_search_names_labels_from_a_vocabulary(vocabulary, tmp_path, capsys):
    vectors = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]], dtype=np.float32)
    index = build_index(vectors, ids=["a", "b", "c"], labels=[[1], [1, 3], [6]])
    save_index(index, str(tmp_path / "index"), metadata={})
    argv = ["--index", str(tmp_path / "index"), "--id", "a", "-k", "1", "--label_names", str(vocabulary)]
    assert search_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "query a  labels: Cars, trucks (1)" in out and "Cars, trucks (1), Music (3)" in out
