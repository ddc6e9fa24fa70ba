"""``medeff`` entry point: dispatches ``medeff <command> ...`` to ``medeff.cli.<command>``.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Commands that take a Hydra config accept trailing ``key=value`` overrides in ``args.overrides``.
User errors (:class:`medeff.errors.MedeffError`) are printed as one paragraph, exit status 2; on a stderr that is
not a terminal each line of the message is printed whole (never hard-wrapped).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import TextIO

from medeff import __version__
from medeff.errors import MedeffError

__all__ = ["main", "COMMANDS", "format_error"]

# command name -> module under medeff.cli
COMMANDS: dict[str, str] = {
    "convert": "medeff.cli.convert",
    "index": "medeff.cli.index",
    "bench": "medeff.cli.bench",
    "evaluate": "medeff.cli.evaluate",
    "report": "medeff.cli.report",
    "demo": "medeff.cli.demo",
    "train": "medeff.cli.train",
    "predict": "medeff.cli.predict",
    "plan": "medeff.cli.plan",
    "crops": "medeff.cli.crops",
    "split": "medeff.cli.split",
    "knn": "medeff.cli.knn",
    "protocols": "medeff.cli.protocols",
    "lidc": "medeff.cli.lidc",
    "postprocess": "medeff.cli.postprocess",
}


def _available() -> dict[str, object]:
    mods = {}
    for name, modname in COMMANDS.items():
        try:
            mods[name] = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:  # command not written yet in this build
                continue
            raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medeff", description="EfficientNet for CT: data, models, training, reports.")
    parser.add_argument("--version", action="version", version=f"medeff {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING or ERROR")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (also MEDEFF_QUIET=1); bars are only drawn when stderr is a terminal")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        p = sub.add_parser(name, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", ""))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def format_error(text: str, stream: TextIO) -> str:
    """The error paragraph as printed on ``stream``.

    Each line of ``text`` stays one line (aggregated errors list one problem per line) and is never hard-wrapped
    when ``stream`` is not a terminal, so logs and scripts see the whole message on one line whatever the path
    lengths or ``COLUMNS``. On a terminal, long lines are wrapped at its width with an indent.
    """
    is_tty = getattr(stream, "isatty", None)
    if not (callable(is_tty) and is_tty()):
        return text
    width = max(40, shutil.get_terminal_size().columns - 1)
    return "\n".join(textwrap.fill(line, width=width, subsequent_indent="  ", break_long_words=False,
                                   break_on_hyphens=False) if line else "" for line in text.splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    from medeff.utils.threads import apply_thread_policy

    try:  # before any command imports torch: threads = usable cores, wait policy by the load at startup
        apply_thread_policy()
    except MedeffError as exc:  # a bad MEDEFF_WAIT_POLICY
        print(format_error(f"medeff: error: {exc}", sys.stderr), file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    from medeff.utils.logging import setup_logging
    from medeff.utils.progress import set_quiet

    setup_logging(args.log_level)
    set_quiet(args.quiet)  # MEDEFF_QUIET=1 in the environment also turns bars off
    try:
        return int(args._run(args) or 0)
    except MedeffError as exc:
        print(format_error(f"medeff {args.command}: error: {exc}", sys.stderr), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medeff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
