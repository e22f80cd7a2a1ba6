"""The first training loss with a zero classifier bias and with the label prior's log-odds.

    python benchmarks/bench_first_loss.py [--data 'video-level/validate00[0-8]?.tfrecord']

Builds the `video` preset's network (one branch with the logistic or the MoE classifier, and the
preset's own 3-branch MoE mixture) exactly as `trainer.train` does, and measures, on one batch of 160
real video-level records in training mode:

- the cross-entropy per video of the model's output (`trainer.losses.binary_cross_entropy` of the
  `logits`: the mixture's, for a mixture), comparable across heads;
- the whole training loss (`trainer.losses.TrainingModel`: for a mixture also each branch's
  cross-entropy and the distillation term; L2 included),

with a zero bias, with every class at the same frequency (`--prior_records 0`: 3 labels / 3,862
classes) and with each class's own frequency counted over the training files
(`trainer.prior.label_prior`, as `trainer.train` does by default). Skips when the data is absent.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

DEFAULT_DATA = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "shared",
    "data",
    "yt8m-2018-video-level",
    "validate00[0-8]?.tfrecord",
)
HEADS = {  # row name -> overrides of the video preset
    "logistic, 1 branch": dict(classifier="logistic", mix_number=1),
    "MoE (2 experts), 1 branch": dict(mix_number=1),
    "MoE, 3 branches + distillation (the preset)": {},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="video-level training TFRecords (glob)")
    parser.add_argument("--batch_size", type=int, default=160, help="videos in the measured batch")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    args = parser.parse_args(argv)
    files = sorted(glob.glob(args.data))
    if not files:
        print(f"skipped: no records match {args.data}")
        return 0

    import keras

    from nextvlad import ModelConfig, build_model, yt8m
    from trainer.losses import TrainingModel, binary_cross_entropy
    from trainer.prior import label_prior, mean_frequency_prior, set_classifier_prior

    prior, records = label_prior(files, num_classes=3862, max_records=100_000)
    features, labels = next(
        iter(yt8m.make_dataset(files, input_format="video", batch_size=args.batch_size, num_classes=3862))
    )
    print(f"label prior from {records:,} records in {len(files)} files; first batch of {args.batch_size}")
    biases = {"zero bias": None, "same frequency for all": mean_frequency_prior(3862), "label prior": prior}
    print("| head | " + " | ".join(f"{b}: output CE / training loss" for b in biases) + " |")
    print("| --- |" + " --- |" * len(biases))
    for name, overrides in HEADS.items():
        cells = []
        for bias in biases.values():
            keras.utils.set_random_seed(args.seed)
            config = ModelConfig.preset("video", **overrides)
            network = build_model(config)
            if bias is not None:
                set_classifier_prior(network, bias)
            model = TrainingModel(network, config)
            outputs = model(features, training=True)
            output_ce = keras.ops.mean(binary_cross_entropy(labels, outputs["logits"]))
            loss = model.compute_loss(y=labels, y_pred=outputs)
            cells.append(
                f"{float(keras.ops.convert_to_numpy(output_ce)):,.1f} / "
                f"{float(keras.ops.convert_to_numpy(loss)):,.1f}"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
