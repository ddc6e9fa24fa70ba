"""Every ``medeff`` command written in the README and docs/ is accepted by the CLI as written.

Each command line is parsed by the real argument parser (subcommand, flags, positional arguments) and, for the
commands configured with Hydra, its overrides are composed against ``conf/`` (a misspelt key, a group option that does
not exist or a malformed value fails here). The commands are run for real by the workflow tests (tests/pipelines,
tests/demo, tests/engine, tests/evaluation); this test keeps the written examples true to the CLI they document.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from medeff.cli.main import COMMANDS, build_parser
from medeff.config import compose

from .doc_commands import find_commands

COMMANDS_FOUND = find_commands()
# commands whose overrides are composed against conf/<name>.yaml unless --config-name says otherwise
CONFIGURED = {"train", "predict", "evaluate", "report", "plan", "bench", "index", "demo"}


def test_the_docs_show_commands():
    assert len(COMMANDS_FOUND) >= 40
    assert {c.argv[0] for c in COMMANDS_FOUND if c.argv} >= {"convert", "index", "train", "predict", "evaluate",
                                                            "report", "bench", "demo", "plan"}


@pytest.mark.parametrize("cmd", COMMANDS_FOUND, ids=str)
def test_documented_command_is_valid(cmd):
    argv = cmd.argv
    assert argv, f"{cmd}: empty command"
    lead: list[str] = []  # options of `medeff` itself, before the subcommand
    while len(argv) > 1 and argv[0] in ("--quiet", "--log-level"):
        n = 2 if argv[0] == "--log-level" else 1
        lead, argv = lead + argv[:n], argv[n:]
    if argv[0].isupper():  # a placeholder such as `medeff COMMAND --help`
        return
    assert argv[0] in COMMANDS, f"{cmd}: unknown subcommand '{argv[0]}'; valid: {sorted(COMMANDS)}"
    if len(argv) == 1:  # the command named in prose (`medeff convert writes ...`), not an invocation
        return
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parser.parse_args(lead + argv)
    except SystemExit as exc:
        assert exc.code == 0, f"{cmd}: the CLI rejects it: {err.getvalue().strip()}"
        return  # --help
    overrides = list(getattr(args, "overrides", None) or [])
    if argv[0] not in CONFIGURED or not overrides and argv[0] not in ("train", "predict"):
        return
    name = getattr(args, "config_name", None) or argv[0]
    overrides = [o for o in overrides if not (argv[0] == "train" and o.startswith("plan="))]
    if argv[0] == "bench" and overrides[:1] == ["data"]:  # `medeff bench data`: conf/bench_data.yaml
        name, overrides = "bench_data", overrides[1:]
    if getattr(args, "multirun", False) and overrides:
        from medeff.cli.train import sweep_overrides

        overrides, swept = sweep_overrides(overrides)
        assert swept or any(o.startswith("hparams_search=") for o in overrides), f"{cmd}: -m without a sweep"
    try:
        compose(name, overrides)
    except Exception as exc:  # noqa: BLE001 - the message is the point of the failure
        pytest.fail(f"{cmd}: the overrides do not compose against conf/{name}.yaml: {exc}")
