"""``medeff crops POSITIONS.csv OUT_DIR [key=value ...]``: 3D crops around world positions (thin wrapper)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "cut 3D crops (NIfTI + manifest) around nodule/tumour positions given in world LPS mm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("positions", help="CSV: series, x_mm, y_mm, z_mm (LPS) [, size_mm, label, patient_id]; "
                        "or per-slice pixel boxes with input_format=pixel_boxes")
    parser.add_argument("out_dir", help="output folder: crops/<case_id>.nii.gz and crops.csv")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="overrides of conf/crops.yaml, e.g. spacing_mm=1.0 size_voxels=48")
    parser.add_argument("--demo-data", action="store_true",
                        help="instead: write phantom chest scans with labelled nodules and their positions CSV to "
                        "POSITIONS's folder (POSITIONS is the CSV to create), then cut the crops")


def run(args: argparse.Namespace) -> int:
    from medeff.data.crops import crops_config, extract_crops

    cfg = crops_config(args.overrides)
    if args.demo_data:
        from medeff.demo.nodules3d import make_nodule_scans

        make_nodule_scans(args.positions, n_scans=int(cfg.demo.scans), seed=int(cfg.demo.seed),
                          overwrite=bool(cfg.overwrite))
    manifest = extract_crops(args.positions, args.out_dir, cfg)
    print(f"{manifest}: crops written under {manifest.parent / 'crops'}")
    return 0
