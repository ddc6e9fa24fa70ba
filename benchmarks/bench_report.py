"""Benchmark: a full evaluation report (evaluate + HTML/PDF/JSON/CSV) for 1,000 segmentation cases with 5 labels
(synthetic 64^3 masks) and for 1,000 classification cases. Goal: each under 60 s on 2 cores.

Usage:
    .venv/bin/python benchmarks/bench_report.py [--cases 1000] [--workers 2] [--out /tmp/medeff_bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd


def make_masks(root: Path, n_cases: int, n_labels: int, size: int, seed: int) -> Path:
    """Write reference and prediction label maps (spheres, prediction perturbed) and an index CSV."""
    rng = np.random.default_rng(seed)
    (root / "ref").mkdir(parents=True, exist_ok=True)
    (root / "pred").mkdir(parents=True, exist_ok=True)
    grid = np.indices((size, size, size)).astype(np.float32)
    rows = []
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for i in range(n_cases):
        ref = np.zeros((size,) * 3, np.uint8)
        pred = np.zeros_like(ref)
        for lab in range(1, n_labels + 1):
            c = rng.uniform(12, size - 12, 3)
            r = rng.uniform(4, 9)
            d2 = ((grid - c[:, None, None, None]) ** 2).sum(0)
            ref[d2 <= r * r] = lab
            if rng.random() > 0.02:  # a few labels missed by the prediction
                c2 = c + rng.normal(0, 1.0, 3)
                r2 = r * rng.uniform(0.85, 1.15)
                pred[((grid - c2[:, None, None, None]) ** 2).sum(0) <= r2 * r2] = lab
        name = f"case{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(ref, affine), root / "ref" / name)
        nib.save(nib.Nifti1Image(pred, affine), root / "pred" / name)
        rows.append({"case_id": f"case{i:04d}", "patient": f"pat{i // 2:04d}", "prediction": f"pred/{name}",
                     "reference": f"ref/{name}"})
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)
    return root / "index.csv"


def make_scores(root: Path, n_cases: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.random(n_cases) < 0.3
    p = 1 / (1 + np.exp(-(rng.normal(size=n_cases) + 1.5 * y)))
    df = pd.DataFrame({"case_id": [f"n{i:05d}" for i in range(n_cases)],
                       "patient": [f"p{i // 3}" for i in range(n_cases)],
                       "label": y.astype(int), "prob": p, "prob_b": np.clip(p + rng.normal(0, 0.1, n_cases), 0, 1),
                       "diameter_mm": rng.uniform(3, 30, n_cases)})
    path = root / "scores.csv"
    df.to_csv(path, index=False)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--labels", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/medeff_bench")
    ap.add_argument("--reuse", action="store_true", help="reuse synthetic data already in --out")
    args = ap.parse_args()
    root = Path(args.out)
    index, scores = root / "seg" / "index.csv", root / "scores.csv"
    if not (args.reuse and index.is_file() and scores.is_file()):
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        index = make_masks(root / "seg", args.cases, args.labels, args.size, 0)
        scores = make_scores(root, args.cases, 1)
        print(f"synthetic data written in {time.perf_counter() - t:.1f} s (not timed below)")

    from medeff.evaluation import evaluate_classification, evaluate_segmentation, render_report

    t0 = time.perf_counter()
    seg = evaluate_segmentation(index, columns={"group": "patient"}, num_workers=args.workers, n_resamples=1000)
    t1 = time.perf_counter()
    render_report(seg, root / "seg_report")
    t2 = time.perf_counter()
    print(f"segmentation, {args.cases} cases x {args.labels} labels ({args.size}^3): evaluate {t1 - t0:.1f} s, "
          f"render {t2 - t1:.1f} s, total {t2 - t0:.1f} s")

    t0 = time.perf_counter()
    cls = evaluate_classification(scores, columns={"group": "patient", "scores": "prob"}, n_resamples=1000,
                                  subgroups=[{"column": "diameter_mm", "bins": [0, 6, 10, 20, 100], "unit": "mm"}],
                                  compare={"score_column": "prob_b", "name": "Model B"})
    t1 = time.perf_counter()
    render_report(cls, root / "cls_report")
    t2 = time.perf_counter()
    print(f"classification, {args.cases} cases: evaluate {t1 - t0:.1f} s, render {t2 - t1:.1f} s, "
          f"total {t2 - t0:.1f} s")


if __name__ == "__main__":
    main()
