"""A real-label frame-level benchmark: pooling methods at the same head and budget on pseudo-videos.

    python benchmarks/bench_pseudoframes.py --output /tmp/pseudoframes [--videos 12000] [--flags ...]

No real frame-level records are available offline, but real labels and real features are: the
YouTube-8M video-level records hold each video's mean rgb and audio features and its labels. A
pseudo-video here is 2-4 real videos played one after the other as scenes: 8-48 frames, each frame a
copy of its scene's real mean features plus Gaussian noise (`--noise` times each feature's standard
deviation over videos), quantized to uint8 as the dataset's extractor does; its labels are the union
of its scenes' labels (3,862 classes). Records are written with the project's own writer
(`nextvlad.yt8m.frame_example_bytes`, `write_tfrecords`).

Splits follow the data's rules: training pseudo-videos are built from real videos of files
`validate0000-0089`, the selection split (per-epoch evaluation, for choosing settings) from
`0090-0099`, the report split from the held-out `0100-0127`, evaluated once per model at the end.

Every model is trained by the command a user would type, `python -m trainer.train --preset P` with
the data paths, plus `--flags` (the same for all), and evaluated with `python -m trainer.evaluate`. The
four models share the head (H=2048, r=8, logistic, dropout 0.5) and the budget (the defaults' epochs
and batch): mean pooling (`meanpool`), NetVLAD (`netvlad`, K=64), NeXtVLAD (`paper`, K=128, G=8) and
NeXtVLAD x3 with distillation (`paper --mix_number 3`). Skips when the data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

DATA = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "yt8m-2018-video-level"
)
SPLITS = {  # split -> real files its pseudo-videos are built from
    "train": [f"validate{i:04d}.tfrecord" for i in range(0, 90)],
    "select": [f"validate{i:04d}.tfrecord" for i in range(90, 100)],
    "report": [f"validate{i:04d}.tfrecord" for i in range(100, 128)],
}
MODELS = {  # name -> trainer.train flags: the same head (H=2048, r=8, logistic) for all
    "mean pooling": ["--preset", "meanpool"],
    "NetVLAD": ["--preset", "netvlad"],
    "NeXtVLAD": ["--preset", "paper"],
    "NeXtVLAD x3 + distillation": ["--preset", "paper", "--mix_number", "3"],
}


def _read_real(files: list[str]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """mean_rgb [N, 1024], mean_audio [N, 128] and the label lists of video-level records."""
    import tensorflow as tf

    spec = {
        "labels": tf.io.VarLenFeature(tf.int64),
        "mean_rgb": tf.io.FixedLenFeature([1024], tf.float32),
        "mean_audio": tf.io.FixedLenFeature([128], tf.float32),
    }
    rgb, audio, labels = [], [], []
    for batch in tf.data.TFRecordDataset(files).batch(4096).map(lambda s: tf.io.parse_example(s, spec)):
        rgb.append(batch["mean_rgb"].numpy())
        audio.append(batch["mean_audio"].numpy())
        labels.extend(tf.RaggedTensor.from_sparse(batch["labels"]).numpy())
    return np.concatenate(rgb), np.concatenate(audio), labels


def write_split(
    split: str, count: int, output: str, *, noise: float, shards: int, seed: int, data: str
) -> tuple[str, int]:
    """Writes `count` pseudo-videos built from the split's real videos; returns (glob, labels per video)."""
    from nextvlad import yt8m

    rgb, audio, labels = _read_real([os.path.join(data, name) for name in SPLITS[split]])
    rgb_std, audio_std = rgb.std(axis=0), audio.std(axis=0)
    rng = np.random.default_rng([seed, list(SPLITS).index(split)])
    per_shard = -(-count // shards)
    total_labels = 0
    for shard in range(shards):
        records = []
        for i in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
            scenes = rng.choice(len(labels), size=rng.integers(2, 5), replace=False)
            frames = int(rng.integers(8, 49))
            cuts = np.sort(rng.choice(np.arange(1, frames), size=len(scenes) - 1, replace=False))
            scene_of_frame = np.repeat(np.arange(len(scenes)), np.diff([0, *cuts, frames]))  # [T]
            sources = scenes[scene_of_frame]
            frame_rgb = rgb[sources] + rng.normal(size=(frames, 1024)) * noise * rgb_std
            frame_audio = audio[sources] + rng.normal(size=(frames, 128)) * noise * audio_std
            video_labels = sorted(set(np.concatenate([labels[s] for s in scenes]).tolist()))
            total_labels += len(video_labels)
            records.append(
                yt8m.frame_example_bytes(
                    f"{split}{i}", video_labels, yt8m.quantize(frame_rgb), yt8m.quantize(frame_audio)
                )
            )
        yt8m.write_tfrecords(os.path.join(output, f"{split}-{shard:05d}-of-{shards:05d}.tfrecord"), records)
    return os.path.join(output, f"{split}-*.tfrecord"), total_labels / count


def diagnose(model_dir: str, data: str, *, batches: int = 4) -> dict[str, float]:
    """How sharp the trained rgb NeXtVLAD layer's soft assignments are, on up to `batches` x 64 videos.

    Returns the mean (over real frames and groups) entropy of the assignment softmax divided by log K
    (1.0: uniform over the K clusters, so every cluster gets the same weighted mean of the frames), the
    mean largest assignment probability, and the mean scale (gamma) of the BatchNorm on the cluster
    logits (the softmax's inverse temperature on standardised logits).
    """
    import keras
    from keras import ops

    from nextvlad import yt8m
    from nextvlad.serving import PREPROCESSING_LAYER

    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    layer = next(layer for layer in model.layers if layer.name.endswith("rgb_nextvlad"))  # first branch
    preprocessing = model.get_layer(PREPROCESSING_LAYER)
    k, g = layer.cluster_size, layer.groups
    entropy, top, frames = 0.0, 0.0, 0
    dataset = yt8m.make_dataset(data, batch_size=64, num_classes=model.output["predictions"].shape[-1])
    for features, _ in dataset.take(batches):
        rgb, _, num_frames = preprocessing(features["rgb"], features["audio"], features["num_frames"])
        logits = layer.cluster_bn(layer.cluster_logits(layer.expand(rgb)), training=False)
        shape = ops.shape(rgb)
        p = ops.convert_to_numpy(ops.softmax(ops.reshape(logits, (shape[0], shape[1], g, k)), axis=-1))
        real = np.arange(p.shape[1])[None, :] < ops.convert_to_numpy(num_frames)[:, None]  # [B, T]
        p = p[real]  # [frames, G, K]
        entropy += float(-(p * np.log(np.maximum(p, 1e-12))).sum(-1).sum())
        top += float(p.max(-1).sum())
        frames += p.shape[0] * g
    gamma = float(np.mean(ops.convert_to_numpy(layer.cluster_bn.gamma)))
    return {
        "entropy_over_log_k": entropy / frames / float(np.log(k)),
        "max_assignment": top / frames,
        "uniform_max_assignment": 1.0 / k,
        "cluster_bn_gamma": gamma,
    }


# Ablations of the NeXtVLAD layer, for finding out why it does (not) beat mean pooling. Each is applied by
# patching the layer's `build` in the training and evaluation processes (`--patch`), so the library
# itself stays as it is.
VARIANTS = {
    "sharp": "BatchNorm scale of the cluster logits starts at 4, not 1: softmax temperature 1/4 at the start",
    "no_cluster_bn": "no BatchNorm on the cluster logits (the softmax sees the raw logits)",
    "no_attention": "attention fixed at 1 (sigmoid(20), not trained)",
}


def _patch_nextvlad(variant: str) -> None:
    import keras
    from keras import ops

    from nextvlad.layers import nextvlad

    class NoNormalization(keras.layers.Layer):
        def call(self, inputs, training=None, mask=None):
            return inputs

    original = nextvlad.NeXtVLAD.build

    def build(self, input_shape):
        original(self, input_shape)
        if variant == "sharp":
            self.cluster_bn.gamma.assign(4.0 * ops.ones_like(self.cluster_bn.gamma))
        elif variant == "no_attention":
            self.attention.kernel.assign(ops.zeros_like(self.attention.kernel))
            self.attention.bias.assign(20.0 * ops.ones_like(self.attention.bias))
            self.attention.trainable = False
        elif variant == "no_cluster_bn":
            self.cluster_bn = NoNormalization(name="no_cluster_bn")

    nextvlad.NeXtVLAD.build = build


def _module_command(module: str, variant: str | None) -> list[str]:
    """`python -m module`, or the same through this script with the NeXtVLAD layer patched."""
    if variant is None:
        return [sys.executable, "-m", module]
    return [sys.executable, os.path.abspath(__file__), "--patch", variant, module]


def _run(command: list[str], log: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "w") as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--patch"]:  # internal: run `module` with the NeXtVLAD layer patched (see VARIANTS)
        import runpy

        _patch_nextvlad(argv[1])
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder for the records, models and results")
    parser.add_argument("--data", default=DATA, help="folder of the real video-level validate*.tfrecord")
    parser.add_argument("--videos", type=int, default=12000, help="training pseudo-videos")
    parser.add_argument("--select_videos", type=int, default=1000, help="selection-split pseudo-videos")
    parser.add_argument("--report_videos", type=int, default=2000, help="report-split pseudo-videos")
    parser.add_argument(
        "--noise", type=float, default=1.0, help="frame noise, in feature standard deviations"
    )
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="trainer.train flags for all")
    parser.add_argument("--tag", default="defaults", help="name of this setting in the results")
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        help="ablation of the NeXtVLAD layer: " + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
    )
    parser.add_argument("--corpus_only", action="store_true", help="write the records, train nothing")
    parser.add_argument(
        "--diagnose",
        nargs="+",
        metavar="MODEL_DIR",
        help="instead of training: how sharp these NeXtVLAD models' rgb assignments are (select split)",
    )
    args = parser.parse_args(argv)
    if not all(os.path.exists(os.path.join(args.data, name)) for names in SPLITS.values() for name in names):
        print(f"skipped: the real video-level records are not all in {args.data}")
        return 0
    os.makedirs(args.output, exist_ok=True)

    corpus = os.path.join(args.output, f"corpus-n{args.noise:g}-s{args.seed}")
    globs_file = os.path.join(corpus, "splits.json")
    if not os.path.exists(globs_file):
        os.makedirs(corpus, exist_ok=True)
        start = time.perf_counter()
        splits = {}
        for split, count, shards in (
            ("train", args.videos, 8),
            ("select", args.select_videos, 2),
            ("report", args.report_videos, 4),
        ):
            pattern, labels_per_video = write_split(
                split, count, corpus, noise=args.noise, shards=shards, seed=args.seed, data=args.data
            )
            splits[split] = dict(glob=pattern, videos=count, labels_per_video=round(labels_per_video, 2))
        with open(globs_file, "w") as f:
            json.dump(splits, f, indent=2)
        print(f"corpus written in {time.perf_counter() - start:.0f} s: {splits}", flush=True)
    with open(globs_file) as f:
        splits = json.load(f)
    if args.corpus_only:
        return 0
    if args.diagnose:
        for model_dir in args.diagnose:
            result = diagnose(model_dir, splits["select"]["glob"])
            print(f"{model_dir}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()), flush=True)
        return 0

    os.makedirs(os.path.join(args.output, "runs"), exist_ok=True)
    rows = []
    for name in args.models:
        model_dir = os.path.join(args.output, "runs", f"{args.tag}-{name.replace(' ', '_')}")
        train = [*_module_command("trainer.train", args.variant), *MODELS[name], "--quiet",
                 "--train_data", splits["train"]["glob"], "--eval_data", splits["select"]["glob"],
                 "--model_dir", model_dir, *args.flags]  # fmt: skip
        _run(train, model_dir + ".train.log")
        with open(os.path.join(model_dir, "metrics.json")) as f:
            trained = json.load(f)
        report = os.path.join(model_dir, "report_metrics.json")
        evaluate = [*_module_command("trainer.evaluate", args.variant), "--model", model_dir, "--quiet",
                    "--data", splits["report"]["glob"], "--output", report]  # fmt: skip
        _run(evaluate, model_dir + ".eval.log")
        with open(report) as f:
            held_out = json.load(f)
        row = (
            f"| {name} | {trained['num_parameters'] / 1e6:.1f}M | {trained['train_seconds']:.0f} s | "
            f"{trained['gap']:.4f} | {held_out['gap']:.4f} | {held_out['hit_at_one']:.4f} | "
            f"{held_out['perr']:.4f} | {held_out['map']:.4f} |"
        )
        rows.append(row)
        print(row, flush=True)
    print(f"\nsetting {args.tag!r}, flags {args.flags}, corpus {splits}")
    print("| model | params | training time | GAP@20 select | GAP@20 report | Hit@1 | PERR | mAP |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
