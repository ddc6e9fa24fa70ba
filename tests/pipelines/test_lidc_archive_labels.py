"""LIDC slice archives: labels other than 0/1 (e.g. -1 for "unknown") are refused, never read as benign."""

from __future__ import annotations

import numpy as np
import pytest

from medeff.errors import InputError
from medeff.pipelines import lidc


def _archive(folder, labels):
    folder.mkdir(parents=True, exist_ok=True)
    n = 2 if labels is None else len(labels)
    arrays = {"images": np.zeros((n, 64, 64), np.uint8), "nodule_key": np.array([f"e{i}/n0" for i in range(n)]),
              "slice_index": np.zeros(n, int)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    np.savez(folder / lidc.ARCHIVE, **arrays)
    return folder


@pytest.mark.parametrize("labels", [[0, 1, -1], [0, 2, 1], [0.0, np.nan, 1.0], [0, 1, 255]])
def test_labels_outside_benign_malignant_are_refused(tmp_path, labels):
    folder = _archive(tmp_path / "d", labels)
    with pytest.raises(InputError) as err:
        lidc.nodule_table(folder)
    msg = str(err.value)
    assert lidc.ARCHIVE in msg and "neither 0" in msg and "unlabelled" in msg


def test_binary_labels_and_unlabelled_archives_are_read(tmp_path):
    table = lidc.nodule_table(_archive(tmp_path / "a", [0, 1, 1]))
    assert table["label"].tolist() == [0, 1, 1]
    assert lidc.nodule_table(_archive(tmp_path / "b", None))["label"].isna().all()
