"""The end-to-end demo: synthetic corpus → train → evaluate → score (Beam) → index → search.

    make demo                         # sets up .venv, then runs this
    python -m pipelines.demo --output .demo [--retrain] [--num_videos 3000]

Each step runs the same command a user would type (shown as it runs), in its own process, and is
skipped when its output already exists (`--retrain` / `--rescore` redo the later steps). The demo
ends with a report: where every artefact is, GAP@20, scoring videos/s and a search result, plus
three pictures in the output folder: the training curve, per-class AP and a 2-D map of the embeddings.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's start-up chatter (absl, oneDNN, no CUDA driver), which TF_CPP_MIN_LOG_LEVEL does not
# silence; it is only hidden from the demo's own report, never from the commands a user runs.
_TENSORFLOW_NOISE = re.compile(
    r"^(WARNING: All log messages before absl|[IE]\d{4} .*(port\.cc|cudart_stub|cuda_platform)|"
    r".*Resource module is not available)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="Run the whole product on a synthetic corpus: train, evaluate, score, index, search.",
    )
    parser.add_argument("--output", default=".demo", help="demo folder (default .demo)")
    parser.add_argument("--num_videos", type=int, default=3000, help="synthetic videos (default 3000)")
    parser.add_argument("--num_classes", type=int, default=20, help="synthetic classes (default 20)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="corpus and training seed (default 0)")
    parser.add_argument("--retrain", action="store_true", help="train again even if a model exists")
    parser.add_argument("--rescore", action="store_true", help="score and index again")
    return parser


class Demo:
    """Runs the steps, each as the command a user would run, and collects the report."""

    SHARDS = 8  # the last shard is held out for evaluation

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.root = Path(args.output).resolve()
        self.data = self.root / "data"
        self.model_dir = self.root / "model"
        self.scores = self.root / "scores" / "scores"
        self.index_dir = self.root / "index"
        self.timings: dict[str, float] = {}

    def run_step(self, name: str, module: str, *flags: str) -> str:
        """Runs `python -m module flags...`, streaming its output live; returns what it printed."""
        command = [sys.executable, "-m", module, *flags]
        printable = " ".join(shlex.quote(part) for part in ["python", "-m", module, *flags])
        print(f"\n=== {name}\n$ {printable}", flush=True)
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        captured = []
        for line in process.stdout:
            if not _TENSORFLOW_NOISE.match(line):
                sys.stdout.write(line)
                sys.stdout.flush()
                captured.append(line)
        returncode = process.wait()
        self.timings[name] = time.perf_counter() - started
        if returncode:
            raise SystemExit(f"demo: step '{name}' failed (exit {returncode}); its output is above")
        return "".join(captured)

    def shard(self, index: int) -> str:
        return str(self.data / f"synthetic-{index:05d}-of-{self.SHARDS:05d}.tfrecord")

    def corpus(self) -> None:
        if glob.glob(str(self.data / "*.tfrecord")) and (self.data / "label_names.csv").exists():
            print(f"\n=== corpus: reusing {self.data}")
            return
        self.run_step(
            "corpus",
            "nextvlad.synthetic",
            f"--output={self.data}",
            f"--num_videos={self.args.num_videos}",
            f"--num_classes={self.args.num_classes}",
            f"--shards={self.SHARDS}",
            f"--seed={self.args.seed}",
        )

    def train(self) -> None:
        if (self.model_dir / "model.keras").exists() and not self.args.retrain:
            print(f"\n=== train: reusing {self.model_dir / 'model.keras'} (--retrain to train again)")
            return
        if self.args.retrain and self.model_dir.exists():
            shutil.rmtree(self.model_dir)
        train_shards = str(self.data / f"synthetic-0000[0-{self.SHARDS - 2}]-of-*.tfrecord")
        self.run_step(
            "train",
            "trainer.train",
            "--preset=demo",
            f"--num_classes={self.args.num_classes}",
            f"--train_data={train_shards}",
            f"--eval_data={self.shard(self.SHARDS - 1)}",
            f"--model_dir={self.model_dir}",
            f"--epochs={self.args.epochs}",
            f"--seed={self.args.seed}",
            f"--label_names={self.data / 'label_names.csv'}",
        )

    def evaluate(self) -> dict:
        self.run_step(
            "evaluate",
            "trainer.evaluate",
            f"--model={self.model_dir}",
            f"--data={self.shard(self.SHARDS - 1)}",
            f"--label_names={self.data / 'label_names.csv'}",
            f"--output={self.root / 'evaluation.json'}",
        )
        return json.loads((self.root / "evaluation.json").read_text())

    def score(self) -> str:
        if glob.glob(f"{self.scores}-*.parquet") and not (self.args.rescore or self.args.retrain):
            print(f"\n=== score: reusing {self.scores}-*.parquet (--rescore to score again)")
            return ""
        for old in glob.glob(f"{self.scores}-*"):
            os.remove(old)
        return self.run_step(
            "score",
            "pipelines.score",
            "--runner=DirectRunner",
            f"--input={self.data / '*.tfrecord'}",
            f"--model={self.model_dir}",
            f"--output={self.scores}",
        )

    def index(self) -> None:
        if (self.index_dir / "index.json").exists() and not (self.args.rescore or self.args.retrain):
            print(f"\n=== index: reusing {self.index_dir}")
            return
        shutil.rmtree(self.index_dir, ignore_errors=True)
        self.run_step(
            "index",
            "pipelines.index",
            "--runner=DirectRunner",
            f"--embeddings={self.scores}-*.parquet",
            f"--output={self.index_dir}",
            "--dim=64",
        )

    def search(self) -> str:
        import pyarrow.parquet as pq

        first = sorted(glob.glob(f"{self.scores}-*.parquet"))[0]
        query = pq.read_table(first, columns=["id"]).column("id")[0].as_py()
        return self.run_step(
            "search",
            "pipelines.search",
            f"--index={self.index_dir}",
            f"--id={query}",
            "-k",
            "5",
            f"--label_names={self.data / 'label_names.csv'}",
        )


def plot_training_curve(history_csv: Path, output: Path) -> Path | None:
    """Loss and GAP per epoch from the trainer's history.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history_csv.exists():
        return None
    with history_csv.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epochs = [int(float(row["epoch"])) if "epoch" in row else i + 1 for i, row in enumerate(rows)]
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    gap_axis = loss_axis.twinx()
    for key in rows[0]:
        values = [float(row[key]) if row[key] not in ("", None) else float("nan") for row in rows]
        if key == "epoch":
            continue
        if "loss" in key:
            loss_axis.plot(epochs, values, marker="o", label=key)
        elif "gap" in key:
            gap_axis.plot(epochs, values, marker="s", linestyle="--", label=key)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    gap_axis.set_ylabel("GAP@20")
    gap_axis.set_ylim(0, 1)
    handles = loss_axis.get_legend_handles_labels()
    more = gap_axis.get_legend_handles_labels()
    loss_axis.legend(handles[0] + more[0], handles[1] + more[1], loc="center right")
    loss_axis.set_title("Training curve")
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def plot_embeddings(
    scores_pattern: str, label_names_csv: Path, output: Path, *, max_points: int = 4000
) -> Path:
    """A 2-D PCA map of the pooled embeddings: single-label videos coloured by their label.

    Multi-label videos sit between their labels' clusters; they are drawn in grey behind the others.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pyarrow.parquet as pq

    tables = [
        pq.read_table(path, columns=["embedding", "labels"]) for path in sorted(glob.glob(scores_pattern))
    ]
    embeddings = np.concatenate(
        [np.asarray(t.column("embedding").to_pylist(), dtype="float32") for t in tables]
    )[:max_points]
    labels = [row for t in tables for row in t.column("labels").to_pylist()][:max_points]
    centred = embeddings - embeddings.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True) + 1e-8
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T  # [N, 2]
    from nextvlad.yt8m import parse_label_names

    names = parse_label_names(label_names_csv.read_text(), source=str(label_names_csv))
    single = np.array([len(row) == 1 for row in labels])
    first = np.array([row[0] if len(row) == 1 else -1 for row in labels])
    figure, axis = plt.subplots(figsize=(8, 6.5))
    axis.scatter(points[~single, 0], points[~single, 1], s=4, color="0.85", label="several labels")
    cmap = plt.get_cmap("tab20")
    for i, label in enumerate(sorted(set(first[single].tolist()))):
        chosen = first == label
        axis.scatter(
            points[chosen, 0], points[chosen, 1], s=9, color=cmap(i % 20), label=names.get(label, str(label))
        )
    axis.set_title("Video embeddings, 2-D PCA (single-label videos coloured by label)")
    axis.legend(markerscale=2.5, fontsize=7, ncol=2, loc="best")
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def own_videos_leg(demo: Demo, *, num_clips: int = 36, num_classes: int = 4) -> str:
    """Your own videos: generated clips → pipelines.extract → trainer.train → pipelines.score.

    The clips (a class colour with a moving square) stand in for a user's mp4 files; Inception-v3 runs
    with seeded random weights at 75×75 (no download, quick on a CPU) and the PCA is learned from the
    clips themselves (`--fit_pca`). Returns the report line.
    """
    import pyarrow.parquet as pq

    from nextvlad.extraction.clips import class_picture, write_clip

    root = demo.root / "own_videos"
    videos, features, model, scores = (
        root / "videos",
        root / "features" / "part",
        root / "model",
        root / "scores" / "s",
    )
    if not glob.glob(str(videos / "*.mp4")):
        videos.mkdir(parents=True, exist_ok=True)
        rows = ["path_or_stem,label_ids"]
        for i in range(num_clips):
            label = i % num_classes
            picture = class_picture(label, num_classes, size=(64, 64))
            write_clip(
                str(videos / f"clip{i:02d}.mp4"), duration=3 + i % 4, fps=2, size=(64, 64), picture=picture
            )
            rows.append(f"clip{i:02d},{label}")
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
    if glob.glob(f"{scores}-*.parquet") and not (demo.args.rescore or demo.args.retrain):
        print(f"\n=== own videos: reusing {root}")
    else:
        shutil.rmtree(root / "features", ignore_errors=True)
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(root / "scores", ignore_errors=True)
        demo.run_step(
            "own videos: extract",
            "pipelines.extract",
            "--runner=DirectRunner",
            f"--input={videos / '*.mp4'}",
            f"--output={features}",
            f"--labels={root / 'labels.csv'}",
            "--weights=none",
            "--image_size=75",
            "--fit_pca=1000",
        )
        demo.run_step(
            "own videos: train",
            "trainer.train",
            "--preset=demo",
            f"--num_classes={num_classes}",
            f"--train_data={features}-*.tfrecord",
            f"--model_dir={model}",
            "--epochs=8",
            "--batch_size=8",
            "--learning_rate=0.01",
            "--quiet",
        )
        demo.run_step(
            "own videos: score",
            "pipelines.score",
            "--runner=DirectRunner",
            f"--input={features}-*.tfrecord",
            f"--model={model}",
            f"--output={scores}",
        )
    table = pq.read_table(sorted(glob.glob(f"{scores}-*.parquet")), columns=["top_classes", "labels"])
    tops, labels = table.column("top_classes").to_pylist(), table.column("labels").to_pylist()
    hits = sum(top[0] in truth for top, truth in zip(tops, labels, strict=True))
    return (
        f"{len(tops)} generated clips → features {features}-*.tfrecord (dead letter {features}-errors-*, "
        f"PCA {features}-pca/); Hit@1 {hits / max(1, len(tops)):.2f} (chance {1 / num_classes:.2f})"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    demo = Demo(args)
    demo.root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    demo.corpus()
    demo.train()
    evaluation = demo.evaluate()
    score_output = demo.score()
    demo.index()
    search_output = demo.search()
    own_videos = own_videos_leg(demo)

    pictures = [
        plot_training_curve(demo.model_dir / "history.csv", demo.root / "training_curve.png"),
        demo.root / "evaluation.png",
        plot_embeddings(
            f"{demo.scores}-*.parquet", demo.data / "label_names.csv", demo.root / "embeddings_2d.png"
        ),
    ]
    speed = next((line for line in score_output.splitlines() if "videos/s" in line), "(scores reused)")
    print("\n" + "=" * 78)
    print(f"Demo finished in {time.perf_counter() - started:.0f} s. Everything is under {demo.root}/")
    print(f"  corpus        {demo.data}/  (synthetic, {args.num_videos} videos, {args.num_classes} classes)")
    print(f"  model         {demo.model_dir / 'model.keras'}  (config.json, history.csv, logs/ beside it)")
    print(f"  evaluation    {demo.root / 'evaluation.json'}  (+ _per_class.csv)")
    print(f"  scores        {demo.scores}-*.parquet  (dead letter: {demo.scores}-errors-*)")
    print(f"  index         {demo.index_dir}/")
    print("  pictures      " + ", ".join(str(p) for p in pictures if p and Path(p).exists()))
    print(
        f"Held-out GAP@20 {evaluation['gap']:.3f}, Hit@1 {evaluation['hit_at_one']:.3f}, "
        f"PERR {evaluation['perr']:.3f} on {evaluation['num_videos']} videos"
    )
    print(f"Scoring: {speed.strip()}")
    print(f"Own videos: {own_videos}")
    print("Search:")
    print("\n".join("  " + line for line in search_output.strip().splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
