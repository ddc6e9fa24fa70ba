"""``medeff predict ckpt=CKPT input=PATH [key=value ...]``: run a checkpoint on new images.

Exit status: 0 when every case was predicted, 1 when some cases failed and were skipped, or miss a requested output
(``on_error=skip``; they are listed on stdout, in ``predictions.json`` and ``failed_cases.csv``), 2 on an error that
stopped the run. Cases named after their input files print under their pseudonymous case ids.
"""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "predict with a trained checkpoint (ckpt=... input=... output_dir=...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="ckpt=FILE input=FILE_OR_FOLDER output_dir=DIR threshold=0.3 ...")
    parser.add_argument("--config-name", default="predict", help="entry config under conf/ (default: predict)")


def run(args: argparse.Namespace) -> int:
    from medeff.config import compose
    from medeff.engine.predict import predict

    result = predict(compose(args.config_name, args.overrides))
    skipped = f" ({result['skipped']} complete from an earlier run)" if result.get("skipped") else ""
    print(f"{len(result['cases'])} case(s) -> {result['output_dir']}{skipped}")
    failed = result.get("failed") or []
    if failed:  # partial success: the predictions are written, but not for every case
        partial = sum(1 for f in failed if f.get("outcome") == "partial")
        print(f"{len(failed) - partial} case(s) failed and were skipped, {partial} case(s) miss a requested output "
              "(listed in predictions.json and failed_cases.csv):")
        for f in failed:
            print(f"  {f['case_id']} ({f['image']}): {f['reason']}")
        return 1
    return 0
