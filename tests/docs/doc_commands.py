"""Find the ``medeff`` command lines written in the README and docs/ (fenced blocks and inline code)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`(medeff [^`]+)`")
# a usage synopsis rather than a command: optional parts in brackets, alternatives
SYNOPSIS = re.compile(r"(^|\s)\.\.\.(\s|$)|\[[^\]=]*\]|\[-|\[[A-Z]|\[key=|\s\|\s")


@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int
    text: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)[1:]

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def doc_files() -> list[Path]:
    # configuration.md is generated from conf/ (tests/docs/test_config_reference.py checks it)
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "configuration.md")]


def _from_block(lines: list[tuple[int, str]], rel: str) -> list[DocCommand]:
    out, buf, start = [], "", 0
    for no, raw in lines:
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if buf:
            buf += " " + line.rstrip("\\").strip()
        elif re.match(r"^(\S+=\S+\s+)*medeff\s", line):
            buf, start = line.rstrip("\\").strip(), no
        else:
            continue
        if not line.endswith("\\"):
            text = re.sub(r"^(\S+=\S+\s+)*", "", buf)  # leading VAR=value environment assignments
            text = re.split(r"\s(?:&&|\|\||;|\|)\s", text)[0]
            if not SYNOPSIS.search(text):
                out.append(DocCommand(rel, start, text))
            buf = ""
    return out


def find_commands() -> list[DocCommand]:
    """Every ``medeff ...`` command line in README.md and docs/**.md."""
    found: list[DocCommand] = []
    for path in doc_files():
        rel = path.relative_to(ROOT).as_posix()
        fence, block = None, []
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = FENCE.match(line.strip())
            if m and fence is None:
                fence, block = m.group(1), []
                continue
            if m is not None and fence is not None and line.strip() == "```":
                if fence in ("", "bash", "sh", "console", "shell"):
                    found += _from_block(block, rel)
                fence = None
                continue
            if fence is not None:
                block.append((no, line))
                continue
            for span in INLINE.findall(line):
                if not SYNOPSIS.search(span):
                    found.append(DocCommand(rel, no, span))
    return found
