"""``medeff bench``: train-step time, work (FLOPs) and memory of medeff models against their peers (MONAI, timm).

:func:`run_bench` runs the cases of ``conf/bench.yaml``; see :mod:`medeff.benchmarks.runner` for the method and
``docs/benchmarks.md`` for results.
"""

from medeff.benchmarks.flops import TRAIN_STEP_FACTOR, forward_flops, side_flops
from medeff.benchmarks.peers import BUILDERS, PeerUnavailable, build_side, import_timm
from medeff.benchmarks.runner import check_ratio, resolve_config, run_bench, summarise_times
from medeff.benchmarks.table import format_report, markdown_report, print_report
from medeff.benchmarks.worker import allocated_peak_bytes, make_batch, saved_bytes, train_step

__all__ = [
    "BUILDERS",
    "PeerUnavailable",
    "TRAIN_STEP_FACTOR",
    "allocated_peak_bytes",
    "build_side",
    "check_ratio",
    "format_report",
    "forward_flops",
    "import_timm",
    "make_batch",
    "markdown_report",
    "print_report",
    "resolve_config",
    "run_bench",
    "saved_bytes",
    "side_flops",
    "summarise_times",
    "train_step",
]
