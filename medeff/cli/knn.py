"""``medeff knn TRAIN_INDEX TEST_INDEX OUT_DIR [key=value ...]``: thumbnail nearest-neighbour baseline."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "nearest-neighbour baseline on 32x32 grey thumbnails (correlation): predictions.csv like medeff predict"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("train_index", help="index of the reference images (e.g. train.json of medeff split)")
    parser.add_argument("test_index", help="index of the images to classify (e.g. test.json of medeff split)")
    parser.add_argument("out_dir", help="folder for predictions.csv and knn.json")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="overrides of conf/knn.yaml, e.g. thumbnail_size=16")


def run(args: argparse.Namespace) -> int:
    from medeff.baselines.knn import knn_config, knn_predict_index

    s = knn_predict_index(args.train_index, args.test_index, args.out_dir, knn_config(args.overrides))
    print(f"{args.out_dir}: thumbnail k-NN on {s['n_reference']} reference image(s), {s['n_test']} test image(s), "
          f"accuracy {s['accuracy']:.3f}")
    return 0
