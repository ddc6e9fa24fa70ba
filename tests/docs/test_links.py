"""Relative links in README.md and docs/ point at files that exist."""

from __future__ import annotations

import re

import pytest

from .doc_commands import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = [target for target in LINK.findall(text)
              if "://" not in target and not target.startswith("mailto:")
              and not (page.parent / target).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"
