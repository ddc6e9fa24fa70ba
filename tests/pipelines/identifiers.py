"""Helpers of the pipeline tests: identifiers read from DICOM headers, and a search of every output file for them."""

from __future__ import annotations

import re
from pathlib import Path

from medeff.utils.text_scan import decoded_texts

__all__ = ["IDENTIFIER_TAGS", "header_identifiers", "find_identifiers"]

IDENTIFIER_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                   "ReferringPhysicianName", "OtherPatientIDs", "PatientAddress", "StudyID")


def header_identifiers(series_dir: Path) -> set[str]:
    """Non-trivial identifier values (and their name parts) found in the headers of a DICOM folder."""
    import pydicom

    out: set[str] = set()
    for f in sorted(p for p in Path(series_dir).iterdir() if p.is_file()):
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        for tag in IDENTIFIER_TAGS:
            value = str(ds.get(tag, "") or "").strip()
            if value and value != "None":
                out.add(value)
                out.update(part for part in re.split(r"[\^ ]", value) if len(part) >= 5)
    return {v for v in out if len(v) >= 4}


def find_identifiers(root: Path, needles: set[str], extra_text: str = "") -> list[tuple[str, str]]:
    """(where, identifier) for every identifier found in any file under ``root`` (or in ``extra_text``)."""
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    assert files, f"no output files under {root}"
    found = []
    for needle in sorted(needles):
        n = needle.encode()
        for p in files:
            if any(n in t for t in decoded_texts(p)):
                found.append((str(p.relative_to(root)), needle))
        if needle in extra_text:
            found.append(("stdout/stderr", needle))
    return found
