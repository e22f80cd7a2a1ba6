"""The demo's "your own videos" leg: generated clips → pipelines.extract → trainer.train → pipelines.score."""

from __future__ import annotations

import glob
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from demo.app import Demo


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
