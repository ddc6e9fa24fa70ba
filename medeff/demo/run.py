"""The end-to-end demo: phantom data -> index -> train -> predict -> evaluate -> report.

Every step calls the same plain functions as the ``medeff`` subcommands, so the demo shows (and tests) the real
path a user takes. It needs no downloaded data and finishes in minutes on two CPU cores.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medeff.errors import ConfigError
from medeff.utils.atomic import write_text_atomic
from medeff.utils.logging import get_logger

__all__ = ["run_demo"]

log = get_logger(__name__)


def _step(title: str):
    log.info("── %s", title)
    return time.perf_counter()


def _make_data(root: Path, cfg: Any) -> dict[str, Any]:
    """Write the demo's phantom data below ``root``: nodule archives and the CT cases (see :func:`_make_ct_data`)."""
    from medeff.demo.phantom import make_nodule_archive

    seed = int(cfg.seed)
    paths: dict[str, Any] = {"nodules_train": root / "nodules_train", "nodules_test": root / "nodules_test"}
    make_nodule_archive(paths["nodules_train"], n_exams=int(cfg.data.nodule_train_exams), seed=seed)
    make_nodule_archive(paths["nodules_test"], n_exams=int(cfg.data.nodule_test_exams), seed=seed + 1000)
    paths.update(_make_ct_data(root, cfg))
    return paths


def _make_ct_data(root: Path, cfg: Any) -> dict[str, Any]:
    """Phantom CT cases: a training set (NIfTI images and label maps, ``ct_train/imagesTr|labelsTr``) and held-out
    test cases, each a DICOM series of its own (``ct_test_dicom/<case>/``, one synthetic patient each) with its
    reference label map (``ct_test_labels/<case>.nii.gz``). Test phantoms use seeds no training phantom uses."""
    import nibabel as nib

    from medeff.demo.dicom_writer import write_ct_series
    from medeff.demo.phantom import make_phantom_ct

    seed = int(cfg.seed)
    d = cfg.data
    shape, spacing = tuple(d.ct_shape), tuple(d.ct_spacing)
    train = root / "ct_train"
    for sub in ("imagesTr", "labelsTr"):
        (train / sub).mkdir(parents=True, exist_ok=True)
    for i in range(int(d.ct_train_cases)):
        ct, lab = make_phantom_ct(shape, spacing, seed=seed + i)
        nib.save(nib.Nifti1Image(ct.array, ct.affine_ras), train / "imagesTr" / f"phantom{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(lab.array, lab.affine_ras), train / "labelsTr" / f"phantom{i:03d}.nii.gz")
    n_test = _check_test_cases(cfg)
    labels_dir = root / "ct_test_labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    tests = []
    for t in range(n_test):
        name = f"test{t:02d}"
        ct, lab = make_phantom_ct(shape, spacing, seed=seed + 10_000 + t)
        write_ct_series(ct, root / "ct_test_dicom" / name, seed=seed + t,
                        identity={"PatientID": f"PHANTOM-{t + 1:04d}"})
        nib.save(nib.Nifti1Image(lab.array, lab.affine_ras), labels_dir / f"{name}.nii.gz")
        tests.append({"case": name, "dicom": root / "ct_test_dicom" / name, "reference": labels_dir / f"{name}.nii.gz"})
    return {"ct_train": train, "ct_test": tests}


def _check_test_cases(cfg: Any) -> int:
    n_test = int(cfg.data.ct_test_cases)
    if n_test < 2:
        raise ConfigError(f"conf/demo.yaml: data.ct_test_cases is {n_test}; the per-organ Dice needs at least 2 "
                          "held-out CT cases for a confidence interval.", hint="set data.ct_test_cases=5 (or more).")
    return n_test


def _train(kind: str, section: Any, index: Path, out: Path, seed: int) -> Path:
    from medeff.config import compose
    from medeff.engine.train import train

    overrides = [f"experiment={section.experiment}", f"data.index={index}", f"run_dir={out}",
                 f"trainer.max_epochs={int(section.epochs)}", "trainer.accelerator=cpu", f"seed={seed}",
                 *list(section.overrides)]
    result = train(compose("train", overrides))
    ckpt = result.get("last_checkpoint") or result.get("best_checkpoint")
    log.info("%s trained: %s", kind, {k: round(v, 3) for k, v in result["metrics"].items() if k.startswith("val/")})
    return Path(ckpt)


def _provenance(cfg: Any, part: str, ckpt: Path) -> dict[str, Any]:
    """What the report records as its configuration: the demo settings and the training run behind the model."""
    from omegaconf import OmegaConf

    demo = OmegaConf.to_container(cfg, resolve=True)
    run_cfg = ckpt.parent.parent / "config.yaml"
    training = OmegaConf.to_container(OmegaConf.load(run_cfg), resolve=False) if run_cfg.is_file() else {}
    return {"demo": {k: demo[k] for k in ("seed", "data", part) if k in demo}, "training": training}


def _nodule_references(archive_dir: Path, out_csv: Path) -> Path:
    """Per-nodule reference labels (and diameters) of a phantom archive, for the evaluation."""
    z = np.load(archive_dir / "nodule_slices_64x64.npz")
    with open(archive_dir / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[str, dict[str, Any]] = {}
    for key, label, row in zip(z["nodule_key"].tolist(), z["labels"].tolist(), rows):
        seen.setdefault(key, {"nodule_key": key, "exam_id": key.split("/")[0], "label": int(label),
                              "diameter_mm": float(row["diameter_mm"])})
    with open(out_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["nodule_key", "exam_id", "label", "diameter_mm"])
        w.writeheader()
        w.writerows(seen.values())
    return out_csv


def run_demo(out_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Path]:
    """Run the whole demo into ``out_dir`` and return the paths of its reports.

    Args:
        out_dir: output folder (created); the data, index files, runs, predictions and reports go below it.
        overrides: Hydra overrides of ``conf/demo.yaml``.

    Returns:
        ``{"classification_report": ..., "segmentation_report": ..., "converted_ct": ...}`` (HTML paths, and the
        first held-out DICOM series converted to NIfTI).
    """
    import torch

    from medeff.config import compose
    from medeff.data import build_index
    from medeff.demo.phantom import ORGAN_LABELS
    from medeff.engine.predict import predict
    from medeff.evaluation import evaluate_classification, render_report
    from medeff.io import read_image, write_image

    cfg = compose("demo", overrides)
    _check_test_cases(cfg)
    torch.set_num_threads(int(cfg.threads))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed)
    t0 = time.perf_counter()

    _step("1/7 phantom data (nodule slice archives, CT volumes with organ labels, held-out DICOM series)")
    data = _make_data(out / "data", cfg)

    _step("2/7 convert a DICOM series to NIfTI (geometry kept)")
    ct_test = write_image(read_image(data["ct_test"][0]["dicom"]), out / "data" / "ct_test.nii.gz")

    _step("3/7 dataset indexes (patient-level folds, fingerprints, leakage check)")
    idx_nod = build_index(data["nodules_train"], out / "index" / "nodules_train.json", overrides=["overwrite=true"])
    organs = ",".join(f"{name}:{value}" for name, value in ORGAN_LABELS.items() if value)
    idx_ct = build_index(data["ct_train"], out / "index" / "ct_train.json",
                         overrides=["folds.k=3", "overwrite=true", f"++labels={{{organs}}}"])
    log.info("indexed %d nodules and %d CT cases", len(idx_nod.cases()), len(idx_ct.cases()))

    _step("4/7 train the nodule classifier (2D EfficientNet, fold 0)")
    ckpt_cls = _train("classifier", cfg.classifier, out / "index" / "nodules_train.json", out / "runs" / "classifier",
                      seed)
    _step("5/7 train the organ segmenter (3D EfficientNet U-Net, fold 0)")
    ckpt_seg = _train("segmenter", cfg.segmenter, out / "index" / "ct_train.json", out / "runs" / "segmenter", seed)

    _step(f"6/7 predict: held-out nodules (per nodule) and {len(data['ct_test'])} held-out DICOM series "
          "(masks in the series' geometry)")
    pred_cls = predict({"ckpt": str(ckpt_cls), "input": str(data["nodules_test"] / "nodule_slices_64x64.npz"),
                        "output_dir": str(out / "predictions" / "nodules"), "overwrite": True, "device": "cpu"})
    seg_index = predict_segmentations(ckpt_seg, data["ct_test"], out / "predictions")

    _step("7/7 evaluate and report (95% CIs, per nodule / per organ)")
    refs = _nodule_references(data["nodules_test"], out / "predictions" / "nodule_references.csv")
    merged = _merge_predictions(Path(pred_cls["files"][0]), refs, out / "predictions" / "nodules_with_reference.csv")
    res_cls = evaluate_classification(
        merged, columns={"case": "nodule_key", "group": "exam_id", "label": "label", "scores": "score"},
        unit="nodule", threshold=float(pred_cls["cases"][0]["threshold"]) if pred_cls["cases"] else 0.5,
        subgroups=[{"column": "diameter_mm", "bins": [0, 10, 15, 20, 100], "unit": "mm"}], seed=seed,
        title="Nodule triage (phantom demo)", config=_provenance(cfg, "classifier", ckpt_cls))
    cls_files = render_report(res_cls, out / "report" / "classification", formats=tuple(cfg.report.formats))
    res_seg = evaluate_demo_segmentation(seg_index, seed=seed, config=_provenance(cfg, "segmenter", ckpt_seg))
    seg_files = render_report(res_seg, out / "report" / "segmentation", formats=tuple(cfg.report.formats))
    reports = {"classification_report": _html(cls_files), "segmentation_report": _html(seg_files),
               "converted_ct": Path(ct_test)}
    log.info("demo finished in %.0f s", time.perf_counter() - t0)
    return reports


def predict_segmentations(ckpt: Path, tests: Sequence[dict[str, Any]], out: Path) -> Path:
    """Predict every held-out DICOM series (one ``medeff predict`` call per series, i.e. per patient) and write the
    evaluation index ``segmentation_pairs.csv`` (case id, predicted mask, reference mask, image) under ``out``."""
    from medeff.engine.predict import predict

    rows = []
    for case in tests:
        res = predict({"ckpt": str(ckpt), "input": str(case["dicom"]), "output_dir": str(out / "ct" / case["case"]),
                       "overwrite": True, "device": "cpu"})
        masks = [f for f in res["files"] if str(f).endswith(".nii.gz")]
        if len(masks) != 1:
            raise RuntimeError(f"predicting held-out case {case['case']} wrote {len(masks)} masks, expected one")
        rows.append({"case_id": case["case"], "prediction": masks[0], "reference": str(case["reference"]),
                     "image": str(case["dicom"])})
    index = out / "segmentation_pairs.csv"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["case_id", "prediction", "reference", "image"])
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(index, buf.getvalue(), overwrite=True)
    return index


def evaluate_demo_segmentation(index: Path, *, seed: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-organ evaluation of the held-out CT cases: every organ of :data:`ORGAN_LABELS`, one row per case; the
    report shows overlays of the worst and the median case on their CT."""
    from medeff.demo.phantom import ORGAN_LABELS
    from medeff.evaluation import evaluate_segmentation

    labels = {v: k for k, v in ORGAN_LABELS.items() if v}
    return evaluate_segmentation(index, columns={"image": "image"}, labels=labels, seed=seed,
                                 title="Organ segmentation (phantom demo)", config=config)


def _html(files: Any) -> Path:
    if isinstance(files, dict):
        files = files.values()
    for f in files:
        if str(f).endswith(".html"):
            return Path(f)
    raise RuntimeError("the report renderer wrote no HTML file")


def _merge_predictions(pred_csv: Path, ref_csv: Path, out_csv: Path) -> Path:
    with open(pred_csv, newline="") as fh:
        preds = {r["case_id"]: r for r in csv.DictReader(fh)}
    with open(ref_csv, newline="") as fh:
        refs = list(csv.DictReader(fh))
    missing = [r["nodule_key"] for r in refs if r["nodule_key"] not in preds]
    if missing:
        raise RuntimeError(f"{len(missing)} reference nodules have no prediction (e.g. {missing[:3]})")
    with open(out_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*refs[0].keys(), "score", "predicted_class"])
        w.writeheader()
        for r in refs:
            p = preds[r["nodule_key"]]
            w.writerow({**r, "score": p["score"], "predicted_class": p["predicted_class"]})
    return out_csv
