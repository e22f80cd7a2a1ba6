"""Local GCS and BigQuery emulators for tests: pytest fixtures and a Beam BigQuery client for them.

`gcs_emulator` runs `gcp-storage-emulator` and `bigquery_emulator` runs `bqemulator` (DuckDB-backed),
each as a subprocess on a free 127.0.0.1 port, once per test session; `scoring_inputs` writes a tiny
model and corpus for end-to-end runs. A test module registers the fixtures with

    pytest_plugins = ["emulators"]

(tests/helpers is on sys.path; a conftest-wide registration would import Beam in every session).
Tests skip when the emulator packages are missing, and fail with the emulator's log when it does not
start within 30 s.

What it takes for Beam to talk to them (docs/design.md, "Known traps of this stack"):
- GCS: `STORAGE_EMULATOR_HOST` (honoured by google-cloud-storage, which Beam's `gs://` IO uses),
  `NO_GCE_CHECK=True` and a project id.
- Beam looks up Google credentials once per process before its first `gs://` access and, finding
  none, retries with backoff for ~17 s. The GCS fixture points `GOOGLE_APPLICATION_CREDENTIALS` at a
  fake authorized-user file whose access token never expires, so the lookup succeeds at once and no
  token is ever refreshed (the emulators ignore the bearer token).
- BigQuery: Beam's `WriteToBigQuery(test_client=...)` is the only way to point Beam at another
  endpoint: `EmulatorBigqueryClient` (from `BigQueryEmulator.make_test_client()`) is Beam's apitools
  `BigqueryV2` client with the emulator's URL, plus the `insert_rows_json` that streaming inserts call.
- FILE_LOADS: the emulator reads `gs://bucket/path` from `$BQEMU_GCS_LOCAL_ROOT/bucket/path`, which the
  fixture points at the GCS emulator's storage folder.
- TensorFlow's own gs:// filesystem (`tf.io.gfile`, `tf.data`) ignores `STORAGE_EMULATOR_HOST` and
  always calls storage.googleapis.com: code under test must reach gs:// through Beam's `FileSystems`.
- The test client is pickled by reference to this module, so it works with the in-process
  DirectRunner; `multi_processing` workers would also need tests/helpers on their PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

STARTUP_TIMEOUT_S = 30.0
PROJECT = "emulator-project"
BUCKET = "emulator-bucket"
# google-cloud-bigquery retries failed calls for up to 10 minutes by default; a malformed row makes
# the emulator fail every retry, so tests give up quickly instead.
CLIENT_DEADLINE_S = 20.0


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "<no log>"


class EmulatorStartError(RuntimeError):
    """An emulator process exited or did not answer within the start-up timeout."""


class _PortTakenError(EmulatorStartError):
    """Another process bound the chosen port between `free_port()` and the emulator's start."""


# Readiness probes go straight to 127.0.0.1, never through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def _serve(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str],
    log_path: Path,
    find_endpoint: Callable[[str], str | None],
    ready_path: str,
) -> Iterator[str]:
    """Run `argv` until the context exits; yields its endpoint once `endpoint + ready_path` answers 200.

    `find_endpoint` gets the log so far and returns `http://127.0.0.1:PORT` once it is known.
    """
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        endpoint = None
        while True:
            if proc.poll() is not None:
                raise EmulatorStartError(
                    f"{name} exited with code {proc.returncode} during start-up; its log ({log_path}):\n"
                    f"{_log_tail(log_path)}"
                )
            log_text = _log_tail(log_path, n=1 << 20)
            if "Address already in use" in log_text:
                raise _PortTakenError(f"{name}: its port was taken by another process")
            endpoint = endpoint or find_endpoint(log_text)
            if endpoint and _answers(endpoint + ready_path):
                break
            if time.monotonic() > deadline:
                raise EmulatorStartError(
                    f"{name} did not answer at {endpoint or 'an unknown port'}{ready_path} within "
                    f"{STARTUP_TIMEOUT_S:.0f} s; its log ({log_path}):\n{_log_tail(log_path)}"
                )
            time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------
# GCS
# --------------------------------------------------------------------------------------------------


@dataclass
class GcsEmulator:
    """A running gcp-storage-emulator."""

    endpoint: str  # http://127.0.0.1:PORT, also in $STORAGE_EMULATOR_HOST
    bucket: str  # created at start-up
    storage_dir: Path  # objects live at storage_dir / bucket / object name
    project: str

    def url(self, path: str) -> str:
        """`gs://` URL of `path` in the emulator's bucket."""
        return f"gs://{self.bucket}/{path.lstrip('/')}"

    def client(self) -> Any:
        """A google-cloud-storage client for the emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def upload(self, local_path: str | Path, name: str) -> str:
        """Copy a local file to the bucket; returns its gs:// URL."""
        self.client().bucket(self.bucket).blob(name).upload_from_filename(str(local_path))
        return self.url(name)

    def list(self, prefix: str = "") -> list[str]:
        """Object names under `prefix` in the bucket, sorted."""
        return sorted(b.name for b in self.client().list_blobs(self.bucket, prefix=prefix))

    def download(self, name: str, local_path: str | Path) -> Path:
        """Copy an object to a local file; returns the local path."""
        self.client().bucket(self.bucket).blob(name).download_to_filename(str(local_path))
        return Path(local_path)


def _fake_credentials_file(directory: Path) -> Path:
    # An authorized-user credential with a token valid until 2099: google.auth.default() returns it
    # without any network call and nothing ever refreshes it.
    path = directory / "fake_application_default_credentials.json"
    path.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "emulator",
                "client_secret": "emulator",
                "refresh_token": "emulator",
                "token": "emulator",
                "expiry": "2099-01-01T00:00:00Z",
            }
        )
    )
    return path


@contextmanager
def run_gcs_emulator(workdir: Path, *, project: str = PROJECT) -> Iterator[GcsEmulator]:
    """Start gcp-storage-emulator with its data in `workdir`; the caller sets the environment.

    The bucket name is unique, so the readiness probe cannot be answered by another session's emulator
    that happens to hold the same port.
    """
    bucket = f"{BUCKET}-{uuid.uuid4().hex[:8]}"
    for attempt in range(3):
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "--data-dir",
            str(workdir),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--default-bucket",
            bucket,
            "--quiet",
        ]
        serve = _serve(
            "gcp-storage-emulator",
            argv,
            env=dict(os.environ),
            log_path=workdir / "gcs_emulator.log",
            find_endpoint=lambda _log, port=port: f"http://127.0.0.1:{port}",
            ready_path=f"/storage/v1/b/{bucket}",
        )
        stack = ExitStack()
        try:
            endpoint = stack.enter_context(serve)
        except _PortTakenError:
            if attempt == 2:
                raise
            continue
        with stack:
            yield GcsEmulator(endpoint, bucket, workdir / ".cloudstorage", project)
        return


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    """A GCS emulator for the session, with Beam and google-cloud-storage pointed at it."""
    missing = _missing("gcp_storage_emulator", "google.cloud.storage")
    if missing:
        pytest.skip(f"GCS emulator tests need {missing}: pip install -e '.[test]'")
    with tempfile.TemporaryDirectory(prefix="gcs_emulator_") as tmp, pytest.MonkeyPatch.context() as mp:
        workdir = Path(tmp)
        try:
            with run_gcs_emulator(workdir) as emulator:
                mp.setenv("STORAGE_EMULATOR_HOST", emulator.endpoint)
                mp.setenv("NO_GCE_CHECK", "True")
                mp.setenv("GOOGLE_CLOUD_PROJECT", emulator.project)
                mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_fake_credentials_file(workdir)))
                yield emulator
        except EmulatorStartError as err:
            pytest.fail(str(err))


# --------------------------------------------------------------------------------------------------
# BigQuery
# --------------------------------------------------------------------------------------------------


def _short_retry() -> Any:
    from google.api_core.retry import Retry
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    retry: Retry = DEFAULT_RETRY.with_deadline(CLIENT_DEADLINE_S)
    return retry


def bigquery_client(endpoint: str, project: str) -> Any:
    """A google-cloud-bigquery client for an emulator at `endpoint` (anonymous credentials)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


def _beam_bigquery_client_class() -> type:
    from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2

    return BigqueryV2


class EmulatorBigqueryClient(_beam_bigquery_client_class()):
    """Beam's apitools BigQuery client, pointed at an emulator, for `WriteToBigQuery(test_client=...)`.

    Beam uses the apitools calls (tables.get/insert, jobs.insert/get) for table creation and load jobs,
    and `insert_rows_json` (a google-cloud-bigquery method) for streaming inserts. Beam pickles the
    client into its DoFns: `__reduce__` rebuilds it from the endpoint, since the HTTP connection inside
    does not pickle.

    Args:
        endpoint: `http://127.0.0.1:PORT` of the emulator.
        project: the default project of the google-cloud-bigquery client used for streaming inserts.
    """

    def __init__(self, endpoint: str, project: str) -> None:
        super().__init__(url=f"{endpoint}/bigquery/v2/", get_credentials=False, response_encoding="utf8")
        self.endpoint = endpoint
        self.project = project
        self._cloud_client: Any = None

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.endpoint, self.project))

    def insert_rows_json(self, table: Any, json_rows: Any, **kwargs: Any) -> Any:
        """Streaming insert through google-cloud-bigquery, with a short retry deadline."""
        if self._cloud_client is None:
            self._cloud_client = bigquery_client(self.endpoint, self.project)
        kwargs.setdefault("retry", _short_retry())
        return self._cloud_client.insert_rows_json(table, json_rows, **kwargs)


@dataclass
class BigQueryEmulator:
    """A running bqemulator."""

    endpoint: str  # http://127.0.0.1:PORT
    project: str
    client: Any  # google.cloud.bigquery.Client
    gcs_root: Path  # where the emulator resolves gs:// URIs of load jobs
    _datasets: set[str] = field(default_factory=set)

    def make_test_client(self) -> EmulatorBigqueryClient:
        """A picklable Beam BigQuery client for `WriteToBigQuery(test_client=...)`."""
        return EmulatorBigqueryClient(self.endpoint, self.project)

    def create_dataset(self, dataset: str = "scores") -> str:
        """Create `dataset` if this session has not; returns its id."""
        if dataset not in self._datasets:
            self.client.create_dataset(f"{self.project}.{dataset}", exists_ok=True, retry=_short_retry())
            self._datasets.add(dataset)
        return dataset

    def unique_table(self, prefix: str = "t", *, dataset: str = "scores") -> str:
        """A fresh table spec `PROJECT:DATASET.TABLE` (the dataset exists, the table does not)."""
        self.create_dataset(dataset)
        return f"{self.project}:{dataset}.{prefix}_{uuid.uuid4().hex[:12]}"

    def read_rows(self, table_spec: str) -> list[dict[str, Any]]:
        """All rows of a table (spec as `PROJECT:DATASET.TABLE`) as plain dicts, sorted by `id`."""
        table_id = table_spec.replace(":", ".")
        rows = self.client.list_rows(table_id, retry=_short_retry(), timeout=CLIENT_DEADLINE_S)
        return sorted((dict(row.items()) for row in rows), key=lambda r: r.get("id"))

    def get_table(self, table_spec: str) -> Any:
        """The table's metadata (`google.cloud.bigquery.Table`)."""
        return self.client.get_table(table_spec.replace(":", "."), retry=_short_retry())


def _bqemulator_endpoint(log: str) -> str | None:
    # With --rest-port 0 the emulator picks a free port itself and logs it as a JSON event.
    for line in log.splitlines():
        if '"rest.listen"' in line:
            try:
                return f"http://127.0.0.1:{int(json.loads(line)['port'])}"
            except (ValueError, KeyError):
                continue
    return None


@contextmanager
def run_bigquery_emulator(
    workdir: Path, *, gcs_root: Path, project: str = PROJECT
) -> Iterator[BigQueryEmulator]:
    """Start bqemulator (in-memory DuckDB) resolving gs:// URIs under `gcs_root`."""
    argv = [
        sys.executable,
        "-c",
        "from bqemulator.cli import main; main()",
        "start",
        "--rest-host",
        "127.0.0.1",
        "--rest-port",
        "0",
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--ephemeral",
        "--project",
        project,
        "--log-level",
        "info",  # the port is only logged at info level
        "--log-format",
        "json",
    ]
    env = dict(os.environ)
    env["BQEMU_GCS_LOCAL_ROOT"] = str(gcs_root)
    env["BQEMU_UPLOAD_STAGING_DIR"] = str(workdir / "uploads")
    with _serve(
        "bqemulator",
        argv,
        env=env,
        log_path=workdir / "bqemulator.log",
        find_endpoint=_bqemulator_endpoint,
        ready_path=f"/bigquery/v2/projects/{project}/datasets",
    ) as endpoint:
        yield BigQueryEmulator(endpoint, project, bigquery_client(endpoint, project), gcs_root)


@pytest.fixture(scope="session")
def bigquery_emulator(gcs_emulator: GcsEmulator) -> Iterator[BigQueryEmulator]:
    """A BigQuery emulator for the session whose load jobs read the GCS emulator's files."""
    missing = _missing("bqemulator", "duckdb", "google.cloud.bigquery")
    if missing:
        pytest.skip(f"BigQuery emulator tests need {missing}: pip install -e '.[test]'")
    with tempfile.TemporaryDirectory(prefix="bq_emulator_") as tmp:
        try:
            with run_bigquery_emulator(Path(tmp), gcs_root=gcs_emulator.storage_dir) as emulator:
                yield emulator
        except EmulatorStartError as err:
            hint = ""
            if "extension" in str(err).lower():
                hint = (
                    "\nDuckDB could not load its extensions offline: run "
                    "`python tests/helpers/install_duckdb_extensions.py` (make test does)."
                )
            pytest.fail(f"{err}{hint}")


# --------------------------------------------------------------------------------------------------
# Inputs for the end-to-end scoring tests against the emulators
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringInputs:
    """A tiny NeXtVLAD model and frame-level TFRecords written in the YouTube-8M format."""

    model_path: Path  # model.keras (serving outputs: predictions, embedding)
    files: tuple[Path, ...]  # TFRecord shards
    ids: tuple[str, ...]  # every video id, in write order
    num_classes: int
    hidden_size: int

    @property
    def pattern(self) -> str:
        """A glob matching every shard."""
        return str(self.files[0].parent / "part-*.tfrecord")


def write_scoring_inputs(
    directory: Path, *, num_videos: int = 6, num_files: int = 2, seed: int = 0
) -> ScoringInputs:
    """Save a tiny model (7 classes, H=16) and `num_videos` random videos (3-12 frames) to `directory`.

    Args:
        directory: where `model.keras` and `data/part-*.tfrecord` go.
        num_videos: videos in total, spread round-robin over the files.
        num_files: TFRecord shards.
        seed: seeds the frames, labels and the model's initial weights.

    Returns:
        The paths and ids written.
    """
    from scoring_data import HIDDEN_SIZE, NUM_CLASSES, save_tiny_model

    from nextvlad import yt8m

    model_path = save_tiny_model(directory / "model.keras", seed=seed)

    rng = np.random.default_rng(seed)
    records: list[list[bytes]] = [[] for _ in range(num_files)]
    ids = []
    for i in range(num_videos):
        frames = int(rng.integers(3, 13))
        video_id = f"v{i:03d}"
        labels = sorted(rng.choice(NUM_CLASSES, size=int(rng.integers(0, 3)), replace=False).tolist())
        rgb = rng.integers(0, 256, size=(frames, yt8m.RGB_SIZE), dtype=np.uint8)
        audio = rng.integers(0, 256, size=(frames, yt8m.AUDIO_SIZE), dtype=np.uint8)
        records[i % num_files].append(yt8m.frame_example_bytes(video_id, labels, rgb, audio))
        ids.append(video_id)
    files = []
    for shard, shard_records in enumerate(records):
        path = directory / "data" / f"part-{shard:05d}.tfrecord"
        yt8m.write_tfrecords(str(path), shard_records)
        files.append(path)
    return ScoringInputs(model_path, tuple(files), tuple(ids), NUM_CLASSES, HIDDEN_SIZE)


@pytest.fixture(scope="session")
def scoring_inputs(tmp_path_factory: pytest.TempPathFactory) -> ScoringInputs:
    """A tiny model and 6 frame-level videos in 2 TFRecord files, shared by the emulator tests."""
    return write_scoring_inputs(tmp_path_factory.mktemp("scoring_inputs"))
