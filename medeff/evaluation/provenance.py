"""Provenance of an evaluation: config, versions, git commit, input hashes, environment, seed, date."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["sha256_file", "collect_provenance"]

_PACKAGES = ("numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "jinja2", "nibabel", "SimpleITK", "torch",
             "monai")


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def collect_provenance(config: dict, inputs: dict[str, str | Path], seed: int | None) -> dict:
    """Gather provenance for a report.

    Args:
        config: the resolved configuration used.
        inputs: role -> input file (predictions, index CSV, ...); each is recorded by file name and SHA-256 only.
        seed: the bootstrap seed.

    Returns:
        A JSON-ready dict.
    """
    from medeff import __version__

    versions = {}
    for pkg in _PACKAGES:  # read installed metadata: no heavy imports
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {
        "medeff_version": __version__,
        "git_commit": _git_commit(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "packages": versions,
        "seed": seed,
        "inputs": {role: {"file": Path(p).name, "sha256": sha256_file(p)} for role, p in inputs.items() if p},
        "config": config,
    }
