"""The output folder of ``medeff predict``: a run manifest, resumable reruns and no stale outputs.

``run_manifest.jsonl`` in ``output_dir`` records, one JSON line per event, every file medeff writes there:

* ``start``: the outputs a case is about to write (so a file left by a killed run is known to be medeff's);
* ``done``: the case is complete (every requested output written), with its input fingerprint, the settings
  digest and its result row;
* ``failed`` / ``partial``: the case failed, or missed a requested output (its other outputs are listed);
* ``owned``: summary files (``predictions.json``, ``predictions.csv``, ``failed_cases.csv``).

Lines are appended and fsynced one at a time; a line cut by a kill is ignored (the case is redone), and the manifest
is rewritten atomically when a run starts and when it ends.

**Rule.** A case is complete when the manifest holds a ``done`` line for its case id with the same input
fingerprint and settings digest and each of its outputs exists. A rerun skips complete cases and predicts the
others (replacing their leftovers, which the manifest lists). It refuses, before any inference and unless
``overwrite=true``: a complete prediction it would replace (other input or settings), complete predictions of cases
it does not predict, and any existing file under an output name that the manifest does not list (medeff did not
write it). At the end of every run the files the manifest lists that this run did not produce (the mask of a case
that now fails, an old ``failed_cases.csv``) are deleted, so ``output_dir`` holds exactly this run's outputs;
files medeff did not write are never deleted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medeff.engine.case_errors import FAILED_CSV, CaseFailures
from medeff.errors import OutputExistsError
from medeff.utils.atomic import write_error, write_text_atomic
from medeff.utils.logging import get_logger

__all__ = ["MANIFEST", "SUMMARY_FILES", "RunManifest", "strict_json", "finish_run"]

log = get_logger(__name__)
MANIFEST = "run_manifest.jsonl"
SUMMARY_FILES = ("predictions.json", "predictions.csv", "failed_cases.csv")
_RESULT_PATHS = ("mask", "dicom_seg")


def strict_json(obj: Any) -> str:
    """JSON text of ``obj``; NaN or infinity raise ``ValueError`` instead of writing the invalid bare tokens."""
    return json.dumps(obj, indent=2, allow_nan=False, default=_default) + "\n"


def _default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    events = []
    for line in path.read_bytes().split(b"\n")[:-1]:  # the part after the last newline is a cut line
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and "event" in ev:
            events.append(ev)
    return events


class RunManifest:
    """The manifest of one run in ``out_dir``.

    Args:
        out_dir: the output folder.
        settings: digest of everything besides the input that changes the outputs.
        overwrite: ``overwrite`` of the config.
        redact: applied to every line written (names withheld).
    """

    def __init__(self, out_dir: Path, settings: str, overwrite: bool, redact: Callable[[str], str] = str) -> None:
        self.out_dir, self.settings, self.overwrite, self.redact = Path(out_dir), settings, overwrite, redact
        self.path = self.out_dir / MANIFEST
        events = _read_events(self.path)
        self.owned: set[str] = set()
        self.previous: dict[str, dict[str, Any]] = {}
        for ev in events:
            self.owned.update(ev.get("outputs") or ev.get("files") or [])
            if ev["event"] in ("done", "failed", "partial"):
                self.previous[str(ev["case_id"])] = ev
            elif ev["event"] == "start":
                self.previous.pop(str(ev["case_id"]), None)  # started again after that record: not complete
        self.records: dict[str, dict[str, Any]] = {}  # this run's case records
        self.produced: set[str] = set()

    # ------------------------------------------------------------------------------------------- planning
    def _complete(self, ev: Mapping[str, Any] | None, fp: str) -> bool:
        return (ev is not None and ev["event"] == "done" and ev.get("fingerprint") == fp
                and ev.get("settings") == self.settings
                and all((self.out_dir / name).is_file() for name in ev.get("outputs") or []))

    def plan(self, records: Sequence[Mapping[str, Any]], fingerprints: Sequence[str],
             outputs: Callable[[Mapping[str, Any]], list[str]]) -> list[dict[str, Any] | None]:
        """Decide per case: its earlier ``done`` record when it is complete and may be skipped, else None.

        Raises:
            OutputExistsError: without ``overwrite``, the run would replace a complete prediction, leave complete
                predictions of other cases beside its own, or replace a file medeff did not write.
        """
        skip: list[dict[str, Any] | None] = []
        problems: list[str] = []
        ids = {str(r["case_id"]) for r in records}
        for rec, fp in zip(records, fingerprints):
            ev = self.previous.get(str(rec["case_id"]))
            if not self.overwrite and self._complete(ev, fp):
                skip.append(ev)
                continue
            skip.append(None)
            if self.overwrite:
                continue
            if ev is not None and ev["event"] == "done" and all(
                    (self.out_dir / n).is_file() for n in ev.get("outputs") or []):
                problems.append(f"case {rec['case_id']} was predicted from another input or with other settings")
            for name in outputs(rec):
                if (self.out_dir / name).exists() and name not in self.owned:
                    problems.append(f"'{name}' exists and is not listed in the folder's {MANIFEST}")
        if not self.overwrite:
            others = sorted(c for c, ev in self.previous.items() if ev["event"] == "done" and c not in ids)
            if others:
                problems.append(f"it holds predictions of {len(others)} case(s) this run does not predict "
                                f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})")
            problems += [f"'{name}' exists and is not listed in the folder's {MANIFEST}" for name in SUMMARY_FILES
                         if (self.out_dir / name).exists() and name not in self.owned]
        if problems:
            raise OutputExistsError(
                f"output_dir '{self.out_dir}' holds earlier outputs this run would replace or leave behind: "
                f"{'; '.join(dict.fromkeys(problems))}.",
                hint="pass overwrite=true to replace them (this run's outputs only are kept), or choose another "
                     "output_dir.", path=str(self.out_dir))
        return skip

    # ------------------------------------------------------------------------------------------- writing
    def begin(self, skipped: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite the manifest for this run: the files medeff owns here and the cases it will skip."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lines = [{"event": "run", "settings": self.settings}]
        if self.owned:
            lines.append({"event": "owned", "files": sorted(self.owned)})
        for ev in skipped:
            lines.append(dict(ev))
            self.records[str(ev["case_id"])] = dict(ev)
            self.produced.update(ev.get("outputs") or [])
        write_text_atomic(self.path, "".join(self.redact(json.dumps(ln)) + "\n" for ln in lines))

    def _append(self, event: dict[str, Any]) -> None:
        line = (self.redact(json.dumps(event, allow_nan=False, default=_default)) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_error(self.path, exc) from exc

    def start(self, case_id: str, outputs: Sequence[str]) -> None:
        """Record the outputs case ``case_id`` is about to write."""
        self.owned.update(outputs)
        self._append({"event": "start", "case_id": case_id, "outputs": list(outputs)})

    def own(self, names: Sequence[str]) -> None:
        """Record summary files about to be written."""
        self.owned.update(names)
        self._append({"event": "owned", "files": list(names)})

    def finish_case(self, event: str, case_id: str, fp: str, outputs: Sequence[str],
                    result: Mapping[str, Any] | None = None, failure: Mapping[str, Any] | None = None) -> None:
        """Record the outcome (``done``, ``partial`` or ``failed``) of a case and the outputs it left."""
        ev: dict[str, Any] = {"event": event, "case_id": case_id, "fingerprint": fp, "settings": self.settings,
                              "outputs": list(outputs)}
        if result is not None:
            ev["result"] = {k: (Path(v).name if k in _RESULT_PATHS and isinstance(v, str) else v)
                            for k, v in result.items()}
        if failure is not None:
            ev["failure"] = dict(failure)
        self.records[case_id] = ev
        self.produced.update(outputs)
        self._append(ev)

    def result(self, ev: Mapping[str, Any]) -> dict[str, Any]:
        """The result row of a record, with its output paths under this ``out_dir``."""
        return {k: (str(self.out_dir / v) if k in _RESULT_PATHS and isinstance(v, str) else v)
                for k, v in (ev.get("result") or {}).items()}

    def write_summary(self, name: str, text: str) -> Path:
        """Write a summary file (owned first, then written atomically, names withheld)."""
        if name not in self.owned:
            self.own([name])
        self.produced.add(name)
        return write_text_atomic(self.out_dir / name, self.redact(text))

    def finish(self) -> list[str]:
        """Delete the files medeff wrote here earlier that this run did not produce; compact the manifest.

        Returns:
            The deleted file names.
        """
        removed = []
        for name in sorted(self.owned - self.produced - {MANIFEST}):
            p = self.out_dir / name
            if p.is_file() and p.parent == self.out_dir:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(name)
        if removed:
            log.info("Removed %d output(s) of an earlier run that this run did not produce: %s", len(removed),
                     ", ".join(removed[:5]) + (", ..." if len(removed) > 5 else ""))
        self.owned = set(self.produced)
        lines = [{"event": "run", "settings": self.settings}, {"event": "owned", "files": sorted(self.produced)}]
        lines += list(self.records.values())
        write_text_atomic(self.path, "".join(self.redact(json.dumps(ln, default=_default)) + "\n" for ln in lines))
        return removed


def finish_run(manifest: RunManifest, results: dict[str, dict[str, Any]], records, failures: CaseFailures,
            header: dict[str, Any], task: str, out_dir: Path, n_skip: int) -> dict[str, Any]:
    """Write the summary files (``failed_cases.csv``, ``predictions.csv``/``.json``), delete stale outputs of
    earlier runs, and build ``predict``'s result.

    Raises:
        InputError: every case failed (after ``failed_cases.csv`` is written and stale outputs are deleted).
    """
    cases = [results[str(r["case_id"])] for r in records if str(r["case_id"]) in results]
    error = failures.all_failed_error(len(records), out_dir)
    files: list[str] = []
    if failures.failed:
        files.append(str(manifest.write_summary(FAILED_CSV, failures.csv_text())))
    if error is not None:
        manifest.finish()
        raise error
    header = {**header, "failed": failures.failed}
    if task == "classification" or any("classification" in m for m in cases):
        rows = cases if task == "classification" else [dict(m["classification"], mask=m["mask"]) for m in cases]
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        files.append(str(manifest.write_summary("predictions.csv", buf.getvalue())))
        files.append(str(manifest.write_summary("predictions.json", strict_json({**header, "cases": rows}))))
        result_cases = rows
    else:
        files.append(str(manifest.write_summary("predictions.json", strict_json({**header, "cases": cases}))))
        result_cases = cases
    manifest.finish()
    result: dict[str, Any] = {"task": task, "output_dir": str(out_dir), "failed": failures.failed,
                              "skipped": n_skip, "cases": cases if task != "classification" else rows}
    if task != "classification":
        outs = [m["mask"] for m in cases] + [m["dicom_seg"] for m in cases if m.get("dicom_seg")]
        outs += [str(out_dir / name) for m in cases for name in m.get("probability_maps") or []]
        result["files"] = outs + files
        if result_cases is not cases:
            result["classification"] = result_cases
    else:
        result["files"] = files
    if failures.failed:
        log.warning("%d of %d case(s) failed or are partial; see %s", len(failures.failed), len(records),
                    out_dir / FAILED_CSV)
    return result
