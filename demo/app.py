"""The end-to-end demo: synthetic corpus → train → evaluate → score (Beam) → index → search, then the
"your own videos" leg (generated clips → extract → train → score).

    make demo                         # sets up .venv, then runs this
    python -m demo --output .demo [--retrain] [--num_videos 3000]

Each step runs the same command a user would type (shown as it runs), in its own process, and is
skipped when its output already exists (`--retrain` / `--rescore` redo the later steps). The demo
ends with a report: where every artefact is, GAP@20, scoring videos/s and a search result, plus
three pictures in the output folder: the training curve, per-class AP and a 2-D map of the embeddings.
"""

from __future__ import annotations

import argparse
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

from demo.own_videos import own_videos_leg
from demo.pictures import plot_embeddings, plot_training_curve

# TensorFlow's start-up chatter (absl, oneDNN, no CUDA driver), which TF_CPP_MIN_LOG_LEVEL does not
# silence; it is only hidden from the demo's own report, never from the commands a user runs.
_TENSORFLOW_NOISE = re.compile(
    r"^(WARNING: All log messages before absl|[IE]\d{4} .*(port\.cc|cudart_stub|cuda_platform)|"
    r".*Resource module is not available)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
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
        return self.run_step(
            "score",
            "pipelines.score",
            "--runner=DirectRunner",
            f"--input={self.data / '*.tfrecord'}",
            f"--model={self.model_dir}",
            f"--output={self.scores}",
            "--overwrite",
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


def main(argv: list[str] | None = None) -> int:
    """Runs every step (skipping those whose output exists) and prints the report."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by the steps: quieter TensorFlow
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
