"""What a scoring run owns under its --output prefix, and a run killed with SIGKILL then run again."""

import glob
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from scoring_data import good_frame_records, read_dead_letters, read_rows, save_tiny_model, write_tfrecords

from pipelines import output_files, score

REPO_ROOT = Path(__file__).resolve().parents[2]


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_every_family_of_a_runs_files_is_found_and_nothing_else(tmp_path):
    hex32 = uuid.uuid4().hex
    ours = [
        _touch(tmp_path / "scores-00000-of-00002.parquet"),
        _touch(tmp_path / "scores-00001-of-00002.parquet"),
        _touch(tmp_path / "scores-00000-of-00003.parquet"),  # an older run with another shard count
        _touch(tmp_path / "scores-errors-00000-of-00001.jsonl"),
        _touch(tmp_path / "scores_segments-00000-of-00001.parquet"),
    ]
    temp = _touch(tmp_path / f"beam-temp-scores-{hex32}" / "1234.scores.parquet").parent
    empty_temp = tmp_path / f"beam-temp-scores-errors-{uuid.uuid4().hex}"  # killed before any row
    empty_temp.mkdir()
    probe = _touch(tmp_path / f"scores-write-check-{uuid.uuid4().hex}.tmp")
    # The readers' glob scores-*.parquet matches these too, but another prefix or a person wrote them.
    foreign = [
        _touch(tmp_path / "scores-2-00000-of-00001.parquet"),
        _touch(tmp_path / "scores-notes.parquet"),
    ]
    others = [
        _touch(tmp_path / "scores2-00000-of-00001.parquet"),
        _touch(tmp_path / "other-00000-of-00001.parquet"),
        _touch(tmp_path / "scores.json"),
        _touch(tmp_path / f"beam-temp-scores2-{hex32}" / "1.scores2.parquet"),
        _touch(tmp_path / "sub" / "scores-00000-of-00001.parquet"),
    ]

    existing = output_files.find_existing(str(tmp_path / "scores"))
    assert [Path(p) for p in existing.shards] == sorted(ours)
    assert [Path(p) for p in existing.leftovers] == sorted([temp, empty_temp]) + [probe]
    assert [Path(p) for p in existing.foreign] == sorted(foreign)

    # Without --overwrite only a killed run's leftovers go; with it the earlier run's shards too.
    output_files.remove(str(tmp_path / "scores"), existing, shards=False)
    assert all(p.exists() for p in ours + foreign + others)
    assert not temp.exists() and not empty_temp.exists() and not probe.exists()
    output_files.remove(
        str(tmp_path / "scores"), output_files.find_existing(str(tmp_path / "scores")), shards=True
    )
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in foreign + others)
    assert not output_files.find_existing(str(tmp_path / "scores")).shards


# ------------------------------------------------------------------------------------------------
# kill -9 in the middle of a run, then the same command again
# ------------------------------------------------------------------------------------------------

NUM_VIDEOS = 3000  # enough for the write stage to last about a second on a tiny model


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("killed")
    save_tiny_model(root / "model.keras")
    records = good_frame_records(np.random.default_rng(1), NUM_VIDEOS, prefix="k", min_frames=1, max_frames=3)
    items = list(records.values())
    for shard in range(2):
        write_tfrecords(root / "data" / f"part-{shard}.tfrecord", items[shard::2])
    return root, sorted(records)


def _temp_files(out: Path) -> list[str]:
    # The Parquet sink's temp folder (not the dead letter's): beam-temp-scores-<32 hex>/...
    return [p for p in glob.glob(str(out / "beam-temp-scores-*" / "*")) if "-errors-" not in p]


def _temp_folders(out: Path) -> list[str]:
    return [p for p in glob.glob(str(out / "beam-temp-scores-*")) if "-errors-" not in p]


@pytest.mark.parametrize(
    "kill_when",
    [
        pytest.param(_temp_folders, id="sink-started"),  # the job is running, no row written yet
        pytest.param(_temp_files, id="writing-rows"),  # a temp Parquet file is being written
    ],
)
def test_a_killed_run_then_the_same_command_gives_the_complete_output_once(
    big_corpus, tmp_path, capsys, kill_when
):
    root, ids = big_corpus
    out = tmp_path / "out"
    out.mkdir()
    argv = [
        "--runner=DirectRunner",
        f"--input={root / 'data' / 'part-*.tfrecord'}",
        f"--model={root / 'model.keras'}",
        f"--output={out / 'scores'}",
        "--top_k=3",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.score", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: SIGKILL reaches anything it started
    )
    deadline = time.monotonic() + 120
    try:
        while not kill_when(out):
            if proc.poll() is not None:
                pytest.fail(
                    f"the run ended (code {proc.returncode}) before it could be killed mid-way:\n"
                    f"{proc.stderr.read().decode(errors='replace')[-3000:]}"
                )
            assert time.monotonic() < deadline, "the run never reached the point to kill it at"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    killed = output_files.find_existing(str(out / "scores"))
    assert killed.leftovers, "a run killed mid-way should have left its temporary folders"
    # None of what the killed run left behind is visible to a reader's glob.
    assert not [p for p in glob.glob(f"{out}/scores-*.parquet") if p not in killed.shards]

    if killed.shards:  # it was killed while renaming its files into place: a rerun must be told
        assert score.main(argv) == 2
        assert "--overwrite" in capsys.readouterr().err
        argv.append("--overwrite")
    assert score.main(argv) == 0
    assert (
        f"Scored {NUM_VIDEOS} videos of {NUM_VIDEOS} records read; 0 dead letters" in capsys.readouterr().out
    )

    rows = read_rows(f"{out}/scores-*.parquet")
    assert [r["id"] for r in rows] == ids  # every video exactly once
    assert read_dead_letters(str(out / "scores")) == []
    # Nothing temporary is left, not even for a reader that takes every Parquet file under the folder.
    assert not output_files.find_existing(str(out / "scores")).leftovers
    assert sorted(glob.glob(f"{out}/**/*.parquet", recursive=True)) == sorted(
        glob.glob(f"{out}/scores-*.parquet")
    )
    assert not [p.name for p in out.iterdir() if p.name.startswith("beam-temp-") or p.suffix == ".tmp"]
