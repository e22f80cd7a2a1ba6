"""trainer.train: the loss against a numpy reference, the model_dir it writes, resuming after kill -9,
mixtures, mixed precision and export, and the errors raised before training starts."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from nextvlad import ModelConfig, build_model, metrics, yt8m
from nextvlad.synthetic import generate_corpus
from trainer import train as tr
from trainer import training
from trainer.config import TrainConfig, learning_rate_schedule, lr_decay_steps
from trainer.losses import TrainingModel, nextvlad_loss
from trainer.training_model import build_training_model

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 10
# The demo preset, shrunk further so that a step takes milliseconds.
TINY = dict(num_classes=NUM_CLASSES, cluster_size=4, groups=2, hidden_size=16, gating_reduction=4)
TINY_FLAGS = [arg for name, value in TINY.items() for arg in (f"--{name}", str(value))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A frame-level synthetic corpus: 3 training shards and 1 held-out shard of 60 videos each."""
    folder = tmp_path_factory.mktemp("corpus")
    generate_corpus(
        folder, num_videos=240, num_classes=NUM_CLASSES, shards=4, seed=0, min_frames=20, max_frames=40
    )
    return {
        "train": str(folder / "synthetic-0000[0-2]-of-00004.tfrecord"),
        "eval": str(folder / "synthetic-00003-of-00004.tfrecord"),
        "labels": str(folder / "label_names.csv"),
    }


@pytest.fixture(scope="module")
def video_corpus(tmp_path_factory) -> dict:
    """Video-level records whose labels depend on the features (so that a model can learn them)."""
    folder = tmp_path_factory.mktemp("video")
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(NUM_CLASSES, 1024)).astype(np.float32)

    def records(count: int, offset: int):
        for i in range(count):
            labels = sorted(rng.choice(NUM_CLASSES, size=rng.integers(1, 3), replace=False).tolist())
            mean_rgb = directions[labels].sum(axis=0) * 0.3 + rng.normal(size=1024) * 0.5
            yield yt8m.video_example_bytes(f"v{offset + i}", labels, mean_rgb, rng.normal(size=128))

    yt8m.write_tfrecords(str(folder / "train.tfrecord"), records(200, 0))
    yt8m.write_tfrecords(str(folder / "eval.tfrecord"), records(100, 1000))
    return {"train": str(folder / "train.tfrecord"), "eval": str(folder / "eval.tfrecord")}


def _run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "trainer.train", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _train(corpus: dict, model_dir: Path, *, eval_data: bool = True, **overrides) -> dict:
    """Runs `train()` in-process on the tiny config."""
    model_fields = {k: overrides.pop(k) for k in list(overrides) if k in ModelConfig.__dataclass_fields__}
    config = ModelConfig.preset("demo", **{**TINY, **model_fields})
    train_config = TrainConfig(
        train_data=corpus["train"],
        eval_data=corpus["eval"] if eval_data else (),
        model_dir=str(model_dir),
        **{"batch_size": 16, "verbose": False, **overrides},
    )
    return training.train(config, train_config)


# ------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------


def _np_bce(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(axis=-1)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_single_model_loss_is_cross_entropy_summed_over_classes_averaged_over_videos():
    labels = np.array([[1, 0, 0, 1], [0, 0, 1, 0]], np.float32)
    logits = np.array([[2.0, -1.0, 0.5, 0.0], [-3.0, 1.0, 4.0, -0.5]], np.float32)
    # Hand-computed: per class -log σ(z) for positives, -log(1 - σ(z)) for negatives.
    softplus = lambda z: np.log1p(np.exp(z))
    video0 = softplus(-2.0) + softplus(-1.0) + softplus(0.5) + softplus(0.0)
    video1 = softplus(-3.0) + softplus(1.0) + softplus(-4.0) + softplus(-0.5)
    loss = keras.ops.convert_to_numpy(nextvlad_loss(labels, {"logits": logits}))
    np.testing.assert_allclose(loss, (video0 + video1) / 2, rtol=1e-6)


def test_single_model_loss_is_stable_for_large_logits():
    labels = np.array([[1.0, 0.0]], np.float32)
    logits = np.array([[-200.0, 200.0]], np.float32)  # both confidently wrong: loss = 400, not inf
    loss = keras.ops.convert_to_numpy(nextvlad_loss(labels, {"logits": logits}))
    np.testing.assert_allclose(loss, 400.0, rtol=1e-6)


def test_mixture_loss_adds_branch_cross_entropy_and_distillation_as_in_design():
    rng = np.random.default_rng(0)
    batch, branches, classes, temperature, weight = 3, 3, 6, 3.0, 9.0
    labels = (rng.random((batch, classes)) < 0.3).astype(np.float32)
    branch_logits = rng.normal(size=(batch, branches, classes)).astype(np.float32) * 2
    gate = _np_softmax(rng.normal(size=(batch, branches)))
    logits = (gate[..., None] * branch_logits).sum(axis=1).astype(np.float32)

    teacher = _np_softmax(logits / temperature)  # [B, C]
    kl = np.zeros((batch,))
    for m in range(branches):
        student = _np_softmax(branch_logits[:, m] / temperature)
        kl += (teacher * np.log(teacher / student)).sum(axis=-1)
    expected = (
        _np_bce(labels, logits).mean()
        + sum(_np_bce(labels, branch_logits[:, m]) for m in range(branches)).mean()
        + weight * kl.mean()
    )
    outputs = {"logits": logits, "branch_logits": branch_logits}
    loss = nextvlad_loss(labels, outputs, kd_temperature=temperature, kd_weight=weight)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), expected, rtol=1e-5)


def test_distillation_teaches_the_branches_not_the_mixture():
    rng = np.random.default_rng(1)
    labels = (rng.random((2, 5)) < 0.4).astype(np.float32)
    logits = tf.Variable(rng.normal(size=(2, 5)).astype(np.float32))
    branch_logits = tf.Variable(rng.normal(size=(2, 3, 5)).astype(np.float32))

    def gradients(kd_weight):
        with tf.GradientTape() as tape:
            loss = nextvlad_loss(
                labels, {"logits": logits, "branch_logits": branch_logits}, kd_weight=kd_weight
            )
        return [g.numpy() for g in tape.gradient(loss, [logits, branch_logits])]

    without, with_kd = gradients(0.0), gradients(9.0)
    np.testing.assert_allclose(with_kd[0], without[0], atol=1e-6)  # the teacher side gets no KD gradient
    assert np.abs(with_kd[1] - without[1]).max() > 1e-3  # the branches do


def test_training_model_loss_adds_l2_on_the_classifier():
    config = ModelConfig.preset("demo", **TINY, l2_penalty=0.5)
    network = build_model(config)
    model = TrainingModel(network, config)
    rng = np.random.default_rng(2)
    inputs = {
        "rgb": rng.normal(size=(2, 5, 1024)).astype(np.float32),
        "audio": rng.normal(size=(2, 5, 128)).astype(np.float32),
        "num_frames": np.array([5, 3], np.int32),
    }
    labels = (rng.random((2, NUM_CLASSES)) < 0.3).astype(np.float32)
    outputs = model(inputs, training=False)
    total = keras.ops.convert_to_numpy(model.compute_loss(inputs, labels, outputs))
    kernel = network.get_layer("classifier").dense.kernel.numpy()
    expected = (
        _np_bce(labels, keras.ops.convert_to_numpy(outputs["logits"])).mean() + 0.5 / 2 * (kernel**2).sum()
    )
    np.testing.assert_allclose(total, expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Training end to end
# ------------------------------------------------------------------------------------------------


def test_cli_writes_model_dir_and_the_reported_gap_is_the_saved_models(corpus, tmp_path):
    model_dir = tmp_path / "run"
    result = _run_cli(
        "--preset", "demo", *TINY_FLAGS, "--train_data", corpus["train"], "--eval_data", corpus["eval"],
        "--model_dir", str(model_dir), "--epochs", "2", "--batch_size", "16", "--learning_rate", "0.003",
        "--label_names", corpus["labels"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in (
        "config.json",
        "train_config.json",
        "history.csv",
        "metrics.json",
        "model.keras",
        "label_names.csv",
    ):
        assert (model_dir / name).is_file(), name
    assert list((model_dir / "logs").glob("events.out.tfevents.*"))
    assert ModelConfig.from_json(model_dir / "config.json") == ModelConfig.preset("demo", **TINY)
    history = (model_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,step,loss,learning_rate,val_gap") and len(history) == 3
    reported = json.loads((model_dir / "metrics.json").read_text())
    assert reported["num_videos"] == 60 and reported["global_step"] == 2 * 12  # 180 videos / 16 per step
    assert "GAP@20" in result.stdout and f"{reported['gap']:.4f}" in result.stdout

    # A fresh process that imports nextvlad loads model.keras in safe mode; its GAP is the reported one.
    script = (
        "import json, sys, keras, numpy as np, nextvlad\n"
        "from nextvlad import metrics, yt8m\n"
        "model = keras.saving.load_model(sys.argv[1], safe_mode=True)\n"
        "scores, labels = [], []\n"
        "for x, y in yt8m.make_dataset(sys.argv[2], batch_size=7, num_classes=10):\n"
        "    scores.append(model.predict_on_batch({k: v.numpy() for k, v in x.items()})['predictions'])\n"
        "    labels.append(y.numpy())\n"
        "gap = metrics.gap(np.concatenate(scores), np.concatenate(labels))\n"
        "print(json.dumps({'outputs': sorted(model.output), 'gap': gap}))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(model_dir / "model.keras"), corpus["eval"]],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["outputs"] == ["embedding", "predictions"]
    assert loaded["gap"] == pytest.approx(reported["gap"], abs=1e-6)
    # Two epochs are enough to beat ranking classes by their frequency in the training data.
    assert reported["gap"] > _label_prior_gap(corpus) + 0.05


def _label_prior_gap(corpus: dict) -> float:
    """GAP of predicting every video's classes by training-set frequency (a model that learned nothing)."""
    train = np.concatenate(
        [y.numpy() for _, y in yt8m.make_dataset(corpus["train"], batch_size=64, num_classes=10)]
    )
    held_out = np.concatenate(
        [y.numpy() for _, y in yt8m.make_dataset(corpus["eval"], batch_size=64, num_classes=10)]
    )
    prior = np.broadcast_to(train.mean(axis=0), held_out.shape)
    return metrics.gap(prior, held_out)


def test_learning_rate_follows_the_staircase_schedule(corpus, tmp_path):
    result = _train(
        corpus, tmp_path / "run", eval_data=False, epochs=3, steps_per_epoch=5, lr_decay_examples=32,
        schedule="paper", learning_rate=2e-4,
    )  # fmt: skip
    assert result["global_step"] == 15
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    learning_rates = [float(row.split(",")[3]) for row in rows]
    # 2e-4 × 0.8^floor(step / (32 examples / 16 per step)) at steps 5, 10 and 15.
    np.testing.assert_allclose(learning_rates, [2e-4 * 0.8 ** (s // 2) for s in (5, 10, 15)], rtol=1e-5)
    assert lr_decay_steps(TrainConfig(train_data="x", model_dir="m", batch_size=160), 1_000_000) == 15625
    short = TrainConfig(train_data="x", model_dir="m", batch_size=100)
    assert lr_decay_steps(short, 1000) == 200  # 100k examples: decays every 20k, five times


def test_cosine_schedule_warms_up_then_decays_to_zero_over_the_run():
    config = TrainConfig(train_data="x", model_dir="m", learning_rate=1e-3, warmup_fraction=0.1)
    schedule = learning_rate_schedule(config, 200)
    rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 10, 20, 110, 200)]
    np.testing.assert_allclose(rates, [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
    # The same shape over a run 100 times longer: it scales with the run.
    long = learning_rate_schedule(config, 20_000)
    assert float(keras.ops.convert_to_numpy(long(11_000))) == pytest.approx(5e-4)


def test_paper_schedule_defaults_to_the_papers_learning_rate():
    args = tr.build_parser().parse_args(["--train_data", "x", "--model_dir", "m", "--schedule", "paper"])
    assert tr.resolve_configs(args)[1].learning_rate == 2e-4
    args = tr.build_parser().parse_args(["--train_data", "x", "--model_dir", "m", "--learning_rate", "0.01"])
    assert tr.resolve_configs(args)[1].learning_rate == 0.01


def test_classifier_bias_starts_every_branch_at_the_label_prior():
    prior = np.array([0.5, 0.2, 0.01, 1e-4, 0.3, 0.05])
    for classifier in ("logistic", "moe"):
        config = ModelConfig.preset(
            "video", num_classes=6, hidden_size=16, mix_number=3, classifier=classifier
        )
        model = build_training_model(config, TrainConfig(train_data="x", model_dir="m"), total_steps=10,
                                     label_prior=prior)  # fmt: skip
        # A zero input gives a zero embedding (no-bias hidden layer, untrained BatchNorm), so the
        # predictions are the classifiers' biases alone, mixed by the gate.
        zeros = {"mean_rgb": np.zeros((2, 1024), "float32"), "mean_audio": np.zeros((2, 128), "float32")}
        predictions = keras.ops.convert_to_numpy(model.network(zeros)["predictions"])
        np.testing.assert_allclose(predictions, np.broadcast_to(prior, (2, 6)), rtol=1e-4)


def test_training_counts_the_label_prior_over_the_training_records(corpus, tmp_path):
    _train(corpus, tmp_path / "run", max_steps=1, eval_data=False)
    resolved = json.loads((tmp_path / "run" / "train_config.json").read_text())["resolved"]
    assert resolved["prior_records"] == resolved["train_records"] == 180
    _train(corpus, tmp_path / "zero", max_steps=1, eval_data=False, prior_records=0)
    assert json.loads((tmp_path / "zero" / "train_config.json").read_text())["resolved"]["prior_records"] == 0


def _readme_training_defaults() -> dict[str, dict[str, str]]:
    """The README's "Training defaults" table: preset -> column -> cell."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("### Training defaults", 1)[1].split("\n#", 1)[0]  # up to the next heading
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    table = {}
    for row in rows[2:]:
        cells = [cell.strip().strip("`") for cell in row.strip("|").split("|")]
        table[cells[0]] = dict(zip(header, cells, strict=True))
    return table


def test_each_presets_defaults_are_what_the_readme_says():
    table = _readme_training_defaults()
    assert set(table) == set(ModelConfig.preset_names())
    for preset, row in table.items():
        args = tr.build_parser().parse_args(["--train_data", "x", "--model_dir", "m", "--preset", preset])
        model_config, train_config = tr.resolve_configs(args)
        assert train_config.schedule == row["schedule"], preset
        assert train_config.learning_rate == float(row["peak learning rate"]), preset
        assert train_config.warmup_fraction == float(row["warm-up"].rstrip("%")) / 100, preset
        assert train_config.epochs == int(row["epochs"]), preset
        assert train_config.batch_size == int(row["batch"]), preset
        assert model_config.l2_penalty == float(row["L2"]), preset
        assert model_config.mix_number == int(row["branches"]), preset
        assert model_config.classifier == row["classifier"], preset


def test_train_config_round_trips_and_names_an_unknown_field():
    config = TrainConfig(train_data=("a*.tfrecord",), model_dir="m", learning_rate=0.01)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"Unknown TrainConfig field\(s\) \['lr'\]"):
        TrainConfig.from_dict({**config.to_dict(), "lr": 0.01})


def test_rerunning_a_finished_run_does_not_train_again(corpus, tmp_path):
    first = _train(corpus, tmp_path / "run", max_steps=4)
    again = _train(corpus, tmp_path / "run", max_steps=4)
    assert (first["global_step"], again["global_step"], again["initial_step"]) == (4, 4, 4)
    assert again["gap"] == pytest.approx(first["gap"])


def test_resuming_under_another_recipe_is_refused_and_the_saved_recipe_kept(corpus, tmp_path):
    model_dir = tmp_path / "run"
    _train(corpus, model_dir, max_steps=4, eval_data=False, learning_rate=1e-3)
    saved = (model_dir / "train_config.json").read_text()
    with pytest.raises(ValueError, match=r"learning_rate: 0\.001 -> 0\.003.*--learning_rate 0\.001"):
        _train(corpus, model_dir, max_steps=4, eval_data=False, learning_rate=3e-3)
    with pytest.raises(ValueError, match=r"total steps: 4 -> 8 .*--max_steps 4"):
        _train(corpus, model_dir, max_steps=8, eval_data=False, learning_rate=1e-3)
    assert (model_dir / "train_config.json").read_text() == saved  # the record of the run is not rewritten
    again = _train(corpus, model_dir, max_steps=4, eval_data=False, learning_rate=1e-3)
    assert (again["initial_step"], again["global_step"]) == (4, 4)


def test_resume_check_names_an_unreadable_config_and_accepts_fields_it_lacks(tmp_path):
    from trainer.checks import check_resumed_recipe

    config = TrainConfig(train_data=("a",), model_dir=str(tmp_path), learning_rate=1e-3)
    saved = tmp_path / "train_config.json"
    saved.write_text("{not json")
    with pytest.raises(
        ValueError, match=r"train_config.json is not the JSON trainer.train writes.*new --model_dir"
    ):
        check_resumed_recipe(str(tmp_path), config, total_steps=10, config_name=saved.name)
    # A config written before a field existed: only the fields it has are compared.
    saved.write_text(json.dumps({"learning_rate": 1e-3, "batch_size": 160}))
    check_resumed_recipe(str(tmp_path), config, total_steps=10, config_name=saved.name)
    with pytest.raises(ValueError, match=r"batch_size: 160 -> 16\).*--batch_size 160"):
        smaller = dataclasses.replace(config, batch_size=16)
        check_resumed_recipe(str(tmp_path), smaller, total_steps=10, config_name=saved.name)


def test_resumes_after_kill_9_with_the_same_step_and_optimizer_state(corpus, tmp_path):
    model_dir = tmp_path / "run"
    args = [
        "--preset", "demo", *TINY_FLAGS, "--train_data", corpus["train"], "--model_dir", str(model_dir),
        "--batch_size", "4", "--max_steps", "400", "--steps_per_epoch", "100", "--checkpoint_steps", "10",
        "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.train", *args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    pointer = model_dir / "checkpoints" / "checkpoint.json"
    deadline = time.monotonic() + 120
    try:
        while not pointer.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # kill it mid-step, somewhere after the first checkpoint
    finally:
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
    assert pointer.exists(), stderr.decode()[-2000:]
    saved = json.loads(pointer.read_text())
    assert 0 < saved["step"] < 400, "the run must be killed mid-training for this test to mean anything"
    # The checkpoint holds the optimizer state: its iteration count is the saved global step.
    with h5py.File(model_dir / "checkpoints" / saved["file"]) as f:
        iterations = [
            f[name][()] for name in _h5_datasets(f) if "optimizer" in name and name.endswith("vars/0")
        ]
    assert [int(np.asarray(v)) for v in iterations] == [saved["step"]]

    result = _run_cli(*args)
    assert result.returncode == 0, result.stderr
    final = json.loads((model_dir / "metrics.json").read_text())
    assert final["initial_step"] == saved["step"]  # continued, not restarted
    assert final["global_step"] == 400
    assert f"resumed at step {saved['step']}" in result.stdout


def _h5_datasets(group, prefix: str = "") -> list[str]:
    names = []
    for key, item in group.items():
        path = f"{prefix}/{key}"
        names.extend(_h5_datasets(item, path) if isinstance(item, h5py.Group) else [path.lstrip("/")])
    return names


def test_video_level_mixture_with_distillation_learns(video_corpus, tmp_path):
    config = ModelConfig.preset("video", num_classes=NUM_CLASSES, hidden_size=32, mix_number=3)
    result = training.train(
        config,
        TrainConfig(
            train_data=video_corpus["train"], eval_data=video_corpus["eval"], model_dir=str(tmp_path / "run"),
            batch_size=20, epochs=4, learning_rate=0.003, verbose=False,
        ),
    )  # fmt: skip
    assert result["global_step"] == 40
    assert result["gap"] > 0.5  # chance (random scores) is ~0.2 on this data
    loaded = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert loaded.output["embedding"].shape[-1] == 3 * 32


def test_mixed_precision_still_exports_a_float32_model_and_a_saved_model(corpus, tmp_path):
    result = _train(corpus, tmp_path / "run", max_steps=3, mixed_precision=True, export_saved_model=True)
    assert result["mixed_precision"] == "mixed_bfloat16"  # no GPU here
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for the caller
    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    x, _ = next(iter(yt8m.make_dataset(corpus["eval"], batch_size=4, num_classes=NUM_CLASSES)))
    inputs = {k: v.numpy() for k, v in x.items()}
    exported = tf.saved_model.load(str(tmp_path / "run" / "saved_model"))
    served = exported.serve(inputs)
    np.testing.assert_allclose(
        served["predictions"].numpy(), model.predict_on_batch(inputs)["predictions"], rtol=1e-4, atol=1e-5
    )


def test_mirrored_distribution_trains(corpus, tmp_path):
    result = _train(corpus, tmp_path / "run", max_steps=2, distribution="mirrored")
    assert result["global_step"] == 2 and (tmp_path / "run" / "model.keras").is_file()


def test_two_replicas_take_the_same_step_as_one(tmp_path):
    # The loss is scaled by 1/replicas (gradients are summed over replicas), so a step on two CPU
    # replicas with half the batch each must equal a single-device step on the whole batch. (A network
    # without BatchNorm: its per-replica batch statistics would legitimately differ.)
    script = r"""
import numpy as np, tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from nextvlad import ModelConfig
from trainer.losses import TrainingModel

config = ModelConfig.preset("video", num_classes=6, mix_number=2)
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 5)).astype("float32")
y = (rng.random((8, 6)) < 0.3).astype("float32")

def one_step(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((5,))
        branches = keras.layers.Reshape((2, 6))(
            keras.layers.Dense(12, kernel_regularizer=keras.regularizers.L2(0.1))(inputs))
        logits = keras.layers.Dense(6)(inputs)
        model = TrainingModel(keras.Model(inputs, {"logits": logits, "branch_logits": branches}), config)
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0, shuffle=False)
    return np.concatenate([w.ravel() for w in model.get_weights()])

single = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
mirrored = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print("max difference", np.abs(single - mirrored).max())
assert np.allclose(single, mirrored, atol=1e-6)
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# Errors before training
# ------------------------------------------------------------------------------------------------


def test_cli_reports_a_pattern_that_matches_nothing(corpus, tmp_path):
    missing = str(tmp_path / "nothing-*.tfrecord")
    result = _run_cli("--preset", "demo", "--train_data", missing, "--model_dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "--train_data" in result.stderr and missing in result.stderr
    assert not (tmp_path / "run").exists()  # nothing written before the data was checked


def test_eval_pattern_that_matches_nothing_is_named(corpus, tmp_path):
    missing = str(tmp_path / "held-out-*.tfrecord")
    with pytest.raises(FileNotFoundError, match=r"--eval_data.*held-out-\*"):
        _train({"train": corpus["train"], "eval": missing}, tmp_path / "run")


def test_video_level_records_for_a_frame_level_model(video_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"video-level records.*--preset video"):
        _train(video_corpus, tmp_path / "run")


def test_frame_level_records_for_a_video_level_model(corpus, tmp_path):
    config = ModelConfig.preset("video", num_classes=NUM_CLASSES)
    train_config = TrainConfig(train_data=corpus["train"], model_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"frame-level records.*input_format='video'"):
        training.train(config, train_config)


def test_label_ids_beyond_num_classes(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"label ids \[.*outside \[0, 5\).*--num_classes"):
        _train(corpus, tmp_path / "run", num_classes=5)
    assert not (tmp_path / "run").exists()


def test_cli_rejects_an_unknown_preset(tmp_path):
    result = _run_cli("--preset", "papper", "--train_data", "x", "--model_dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Unknown preset 'papper'" in result.stderr and "paper" in result.stderr


def test_input_format_must_agree_with_the_preset():
    args = tr.build_parser().parse_args(
        ["--train_data", "x", "--model_dir", "m", "--preset", "paper", "--input_format", "video"]
    )
    with pytest.raises(ValueError, match=r"--input_format video contradicts --preset paper.*--preset video"):
        tr.resolve_configs(args)


def test_model_dir_of_another_model_is_refused(corpus, tmp_path):
    _train(corpus, tmp_path / "run", max_steps=1, eval_data=False)
    with pytest.raises(ValueError, match=r"different model.*cluster_size: 4 -> 8.*new --model_dir.*delete"):
        _train(corpus, tmp_path / "run", max_steps=2, eval_data=False, cluster_size=8)


def test_every_model_config_field_is_a_flag():
    parser = tr.build_parser()
    args = parser.parse_args(
        ["--train_data", "a", "b", "--model_dir", "m", "--preset", "demo", "--mix_number", "3",
         "--drop_rate", "0.25", "--pooling", "netvlad", "--epochs", "7"]
    )  # fmt: skip
    model_config, train_config = tr.resolve_configs(args)
    assert model_config == ModelConfig.preset("demo", mix_number=3, drop_rate=0.25, pooling="netvlad")
    assert train_config.train_data == ("a", "b") and train_config.epochs == 7
    flags = {action.dest for action in parser._actions}
    assert {name for name in ModelConfig.__dataclass_fields__} <= flags
    assert "the audio branch uses K/2" in parser.format_help()  # field comments become help text
