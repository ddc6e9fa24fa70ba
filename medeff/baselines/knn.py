"""Nearest-neighbour lookup of small grey thumbnails: a baseline that learns nothing.

Every image becomes a ``size x size`` thumbnail of block means, z-normalised (:func:`medeff.data.leakage.thumbnail`,
the leakage guard's own), so the dot product of two thumbnails divided by their length is their Pearson correlation
and ``1 - r`` the correlation distance. A test image gets the class of its most correlated training image. Class
probabilities, for ROC curves, are a softmax over the best correlation reached in each class,
``p_c = exp(r_c / T) / sum_k exp(r_k / T)`` with temperature ``T``: the most probable class is always the nearest
neighbour's, and two classes with nearly equal best matches share the probability.

On a split that leaves near-copies of test images in training, this lookup scores as well as it can copy; on a
split by patient (or near-duplicate group) it shows what plain image similarity is worth.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medeff.data.leakage import thumbnail
from medeff.errors import ConfigError, IndexValidationError
from medeff.utils.atomic import check_writable, write_json_atomic, write_text_atomic
from medeff.utils.logging import get_logger

__all__ = ["ThumbnailKNN", "knn_config", "knn_predict_index", "index_thumbnails"]

log = get_logger(__name__)


class ThumbnailKNN:
    """1-nearest-neighbour classifier on correlation of z-normalised thumbnails.

    Args:
        size: samples per axis of the thumbnail (32 -> 32x32 in 2D).
        temperature: softmax temperature over the per-class best correlations (> 0).
    """

    def __init__(self, size: int = 32, temperature: float = 0.05) -> None:
        if int(size) < 2:
            raise ConfigError(f"thumbnail_size must be at least 2, got {size}.", hint="e.g. thumbnail_size=32.")
        if not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}.", hint="e.g. temperature=0.05.")
        self.size, self.temperature = int(size), float(temperature)
        self.thumbs: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.n_classes = 0

    def thumbnails(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``[n, size**ndim]`` thumbnails of ``images`` (each z-normalised)."""
        return np.stack([thumbnail(np.asarray(im), self.size) for im in images]).astype(np.float32)

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[int], n_classes: int | None = None) -> ThumbnailKNN:
        """Remember the thumbnails and classes of the reference (training) images."""
        labels = np.asarray([int(v) for v in labels])
        if len(images) != len(labels) or len(labels) == 0:
            raise ConfigError(f"fit needs one label per image and at least one image (got {len(images)} images, "
                              f"{len(labels)} labels).", hint="pass the training images and their classes.")
        self.thumbs = self.thumbnails(images)
        self.labels = labels
        self.n_classes = int(n_classes) if n_classes is not None else int(labels.max()) + 1
        return self

    def predict(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Probabilities ``[n, n_classes]``, the nearest reference image (position) and its correlation.

        A class without reference images gets probability 0.
        """
        if self.thumbs is None:
            raise ConfigError("ThumbnailKNN.predict called before fit.", hint="call fit(train_images, labels).")
        q = self.thumbnails(images)
        r = q @ self.thumbs.T / np.float32(q.shape[1])  # Pearson correlation, [n_test, n_train]
        nearest = r.argmax(axis=1)
        best = np.full((len(q), self.n_classes), -np.inf, dtype=np.float64)
        for c in range(self.n_classes):
            cols = self.labels == c
            if cols.any():
                best[:, c] = r[:, cols].max(axis=1)
        z = best / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return {"prob": p, "nearest": nearest, "nearest_r": r[np.arange(len(q)), nearest].astype(np.float64)}


def knn_config(overrides: Sequence[str] = ()) -> Any:
    """Compose ``conf/knn.yaml`` with Hydra ``key=value`` overrides."""
    from medeff.config import compose

    return compose("knn", overrides)


def index_thumbnails(index: Any, cases: Sequence[Any]) -> list[np.ndarray]:
    """The grey image of each case (archive cases: their middle row), read through the index.

    Raises:
        IndexValidationError: a case cannot be read.
    """
    from medeff.data.index_validation import inspect_case, raise_problems

    images, problems = [], []
    for rec in cases:
        ins = inspect_case(index, rec, load=True)
        problems += ins.problems
        if ins.image is not None:
            images.append(ins.image[len(ins.image) // 2] if rec.archive is not None else ins.image)
    raise_problems(problems, f"Index '{index.path}'", index.path)
    return images


def knn_predict_index(train_index: str | os.PathLike, test_index: str | os.PathLike, out_dir: str | os.PathLike,
                      cfg: Any = None) -> dict[str, Any]:
    """Fit :class:`ThumbnailKNN` on the training cases of ``train_index`` and predict every case of ``test_index``.

    Writes ``OUT_DIR/predictions.csv`` (case_id, file, label, ``p_<class>`` per class, predicted_class,
    predicted_index, nearest_file, nearest_r) and ``OUT_DIR/knn.json`` (settings and accuracy), atomically.

    Raises:
        IndexValidationError: the indexes disagree on the classes or cannot be read.
        OutputExistsError: an output exists and ``overwrite`` is false.
    """
    from medeff.data.index_validation import load_index

    cfg = knn_config() if cfg is None else cfg
    out = Path(out_dir)
    for name in ("predictions.csv", "knn.json"):
        check_writable(out / name, overwrite=bool(cfg.overwrite))
    train, test = load_index(train_index), load_index(test_index)
    if train.task != "classification" or list(train.class_names) != list(test.class_names):
        raise IndexValidationError(
            f"Training index '{train_index}' ({train.task}, classes {train.class_names}) and test index "
            f"'{test_index}' ({test.task}, classes {test.class_names}) must be classification indexes with the "
            "same classes.", hint="use the train.json and test.json written by one `medeff split`.",
            path=str(test_index))
    reference = str(cfg.reference)
    if reference not in ("train", "train_val"):
        raise ConfigError(f"reference must be train or train_val, got {reference!r}.",
                          hint="train: training cases only (fold != data fold); train_val: every case of the index.")
    ref_cases = [c for c in train.all_cases
                 if reference == "train_val" or train.num_folds < 2 or c.fold != int(cfg.val_fold)]
    model = ThumbnailKNN(int(cfg.thumbnail_size), float(cfg.temperature))
    log.info("Thumbnail k-NN: %d reference and %d test image(s), %dx%d thumbnails.", len(ref_cases),
             len(test.all_cases), model.size, model.size)
    model.fit(index_thumbnails(train, ref_cases), [int(c.label) for c in ref_cases], len(train.class_names))
    res = model.predict(index_thumbnails(test, test.all_cases))
    names = list(train.class_names)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "file", "label", *[f"p_{n}" for n in names], "predicted_class", "predicted_index",
                "nearest_file", "nearest_r"])
    correct = 0
    for c, p, j, r in zip(test.all_cases, res["prob"], res["nearest"], res["nearest_r"]):
        k = int(np.argmax(p))
        correct += int(k == int(c.label))
        ref = ref_cases[int(j)]
        w.writerow([c.case_id, c.image[0] if c.image else "", int(c.label), *[f"{v:.6f}" for v in p], names[k], k,
                    ref.image[0] if ref.image else ref.case_id, f"{r:.4f}"])
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "predictions.csv", buf.getvalue(), overwrite=bool(cfg.overwrite))
    summary = {"model": "thumbnail_knn", "thumbnail_size": model.size, "temperature": model.temperature,
               "reference": reference, "n_reference": len(ref_cases), "n_test": len(test.all_cases),
               "accuracy": correct / len(test.all_cases) if test.all_cases else None}
    write_json_atomic(out / "knn.json", summary, overwrite=bool(cfg.overwrite))
    return summary
