"""The first training loss with a zero classifier bias and with the label prior's log-odds.

    python benchmarks/bench_first_loss.py [--data 'video-level/validate00[0-8]?.tfrecord']

Builds the `video` preset's network (and variants: logistic head, 3-branch mixture) exactly as
`trainer.train` does, and prints the training loss (`trainer.losses.TrainingModel`, training mode, L2
included) on one batch of 160 real video-level records, before and after `trainer.prior.set_classifier_prior`
with the class frequencies counted over the training files. Skips when the data is absent.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

DEFAULT_DATA = os.path.join(
    os.path.dirname(__file__),
    "..",
    "..",
    "shared",
    "data",
    "yt8m-2018-video-level",
    "validate00[0-8]?.tfrecord",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="video-level training TFRecords (glob)")
    parser.add_argument("--batch_size", type=int, default=160)
    args = parser.parse_args(argv)
    files = sorted(glob.glob(args.data))
    if not files:
        print(f"skipped: no records match {args.data}")
        return 0

    import keras

    from nextvlad import ModelConfig, build_model, yt8m
    from trainer.losses import TrainingModel
    from trainer.prior import label_prior, mean_frequency_prior, set_classifier_prior

    prior, records = label_prior(files, num_classes=3862, max_records=100_000)
    features, labels = next(
        iter(yt8m.make_dataset(files, input_format="video", batch_size=args.batch_size, num_classes=3862))
    )
    print(f"label prior from {records:,} records; first batch of {args.batch_size}")
    print("| head | zero bias | mean-frequency bias | label-prior bias |")
    print("| --- | --- | --- | --- |")
    for name, overrides in (
        ("logistic", dict(classifier="logistic")),
        ("MoE (2 experts)", {}),
        ("MoE, 3-branch mixture", dict(mix_number=3)),
    ):
        losses = []
        for bias in (None, mean_frequency_prior(3862), prior):
            keras.utils.set_random_seed(0)
            config = ModelConfig.preset("video", **overrides)
            network = build_model(config)
            if bias is not None:
                set_classifier_prior(network, bias)
            model = TrainingModel(network, config)
            outputs = model(features, training=True)
            losses.append(float(keras.ops.convert_to_numpy(model.compute_loss(y=labels, y_pred=outputs))))
        print(f"| {name} | " + " | ".join(f"{loss:,.1f}" for loss in losses) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
