"""Fixtures for engine tests: a phantom nodule archive and phantom CT volumes, each with a dataset index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _write_index(path: Path, **fields) -> Path:
    from medeff.data.index_types import DatasetIndex

    index = DatasetIndex(**fields)
    path.write_text(json.dumps(index.to_json(), indent=1))
    return path


@pytest.fixture(scope="session")
def nodule_index(tmp_path_factory) -> Path:
    """Index over a phantom LIDC-style archive (one case per nodule, 3 folds by exam), built by ``medeff index``."""
    from medeff.data.index_build import build_index
    from medeff.demo.phantom import make_nodule_archive

    root = tmp_path_factory.mktemp("nodules")
    make_nodule_archive(root, n_exams=12, malignant_fraction=0.45, seed=1)
    build_index(root, root / "index.json", overrides=["folds.k=3", "class_names=[benign,malignant]"])
    return root / "index.json"


@pytest.fixture(scope="session")
def organ_index(tmp_path_factory) -> Path:
    """Index over three small phantom CT volumes with organ label maps (NIfTI), folds [0, 1, 1]."""
    import nibabel as nib

    from medeff.data.index_types import CaseRecord
    from medeff.demo.phantom import ORGAN_LABELS, make_phantom_ct

    root = tmp_path_factory.mktemp("organs")
    records = []
    for seed, fold in zip(range(3), (0, 1, 1)):
        ct, lab = make_phantom_ct((36, 30, 14), (8.0, 8.0, 10.0), seed=seed)
        nib.save(nib.Nifti1Image(ct.array, ct.affine_ras), root / f"ct{seed}.nii.gz")
        nib.save(nib.Nifti1Image(lab.array, lab.affine_ras), root / f"ct{seed}_seg.nii.gz")
        records.append(CaseRecord(case_id=f"ct{seed}", image=[f"ct{seed}.nii.gz"], label=f"ct{seed}_seg.nii.gz",
                                  group=f"p{seed}", fold=fold, metadata={"class": seed % 2}))
    return _write_index(root / "index.json", task="segmentation", source_kind="nifti", root=str(root),
                        spatial_dims=3, channel_names=["ct"], labels=dict(ORGAN_LABELS), class_names=[],
                        num_folds=2, fold_seed=0, stratified=False, all_cases=records)


@pytest.fixture(scope="session")
def crop_index(tmp_path_factory) -> Path:
    """Classification index over four small CT crops of different sizes and spacing (3D nodule-crop layout)."""
    import nibabel as nib

    from medeff.data.index_types import CaseRecord
    from medeff.demo.phantom import make_phantom_ct

    root = tmp_path_factory.mktemp("crops")
    records = []
    for i, shape in enumerate([(20, 18, 10), (26, 22, 12), (18, 18, 8), (24, 20, 14)]):
        ct, _ = make_phantom_ct(shape, (1.4, 1.2, 2.5), seed=i)
        nib.save(nib.Nifti1Image(ct.array, ct.affine_ras), root / f"n{i}.nii.gz")
        records.append(CaseRecord(case_id=f"n{i}", image=[f"n{i}.nii.gz"], label=[0, 1, 1, 0][i], group=f"g{i}",
                                  fold=i % 2))
    return _write_index(root / "index.json", task="classification", source_kind="nifti", root=str(root),
                        spatial_dims=3, channel_names=["ct"], labels={}, class_names=["benign", "malignant"],
                        num_folds=2, fold_seed=0, stratified=False, all_cases=records)
