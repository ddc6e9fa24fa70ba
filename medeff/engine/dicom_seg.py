"""DICOM Segmentation (SEG) output for ``medeff predict``: one binary segment per label, frames on the source slices.

Enabled with ``output_format: [nifti, dicom_seg]`` in ``conf/predict.yaml`` (needs the optional extra
``pip install "medeff[dicom-seg]"``, i.e. highdicom). For every input that is a DICOM series, the label map
(the same array written as ``<case>_seg.nii.gz``) is cut into frames that lie exactly on the source slices
(per-frame ``PlanePositionSequence`` = the source ``ImagePositionPatient``) and written as ``<case>_seg.dcm``,
a SEG object referencing the source study, series and instances by UID.

Patient data: a SEG normally copies the patient and study modules of its source. medeff writes no patient
identifier into any output, so the SEG gets ``PatientName`` empty, ``PatientID`` = a keyed-hash pseudonym of the
source PatientID (``grp_`` + 12 hex digits; with ``dicom_seg.pseudonym_salt`` equal to the index's
``pseudonym.salt`` it is the group pseudonym of the dataset index, otherwise random per run) and empty birth date,
sex, accession number, referring physician, study ID, study date and time. ``StudyInstanceUID`` and the series and
instance references are kept (the standard needs them to tie the SEG to its images): a PACS re-links the SEG to
its patient through them, or the user edits the patient module after import. Before the file is written, every
text element of the SEG is searched for every identifying value of the source headers, as whole values or runs of
whole tokens (not substrings, so a short numeric ID cannot match inside a generated time or number), and the
identifying attributes must be empty; a hit refuses the output, naming the element.

Segment codes: a label whose name is a known organ (``dicom_seg.organ_codes`` in ``conf/predict.yaml``: liver,
spleen, kidney_left, ...) gets that organ's SNOMED CT code as its ``SegmentedPropertyTypeCodeSequence`` (category
Anatomical Structure), with a Left/Right ``SegmentedPropertyTypeModifierCodeSequence`` where the table gives a
laterality; any other label gets the generic type Anatomical Structure (SNOMED CT 91723000).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medeff.errors import ConfigError, InputError, OutputWriteError
from medeff.utils.atomic import atomic_path
from medeff.utils.logging import get_logger
from medeff.utils.options import look_up

__all__ = ["OUTPUT_FORMATS", "IDENTIFYING_TAGS", "check_output_formats", "organ_code_table", "require_highdicom",
           "is_dicom_input", "source_frames", "write_dicom_seg", "write_seg_outputs"]

log = get_logger(__name__)

OUTPUT_FORMATS = ("nifti", "dicom_seg")
#: Source tags whose values must never reach the SEG (checked on the written bytes).
IDENTIFYING_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "AccessionNumber",
                    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "OtherPatientIDs",
                    "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
                    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "StationName", "StudyID",
                    "IssuerOfPatientID", "PatientComments", "RequestingPhysician")
# set to these values on the copies of the source headers handed to highdicom (type 2: present, may be empty)
_BLANKED = {"PatientName": "", "PatientBirthDate": "", "PatientSex": "", "AccessionNumber": "",
            "ReferringPhysicianName": "", "StudyID": "", "StudyDate": "", "StudyTime": ""}
# text VRs searched for identifying values (dates, times, numbers, UIDs and binary data are generated, not copied)
_TEXT_VRS = {"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_TOKEN = re.compile(r"[^\W_]+")
_EXTRA_HINT = 'install the extra: pip install "medeff[dicom-seg]" (highdicom), or set output_format=[nifti].'


def check_output_formats(value: Any, task: str | None = None) -> list[str]:
    """Validate ``output_format`` (a name or a list of names) and return the list.

    Raises:
        ConfigError: an unknown format, ``dicom_seg`` for a classification checkpoint, or highdicom missing.
    """
    formats = [value] if isinstance(value, str) else list(value or ["nifti"])
    for f in formats:
        look_up(str(f), OUTPUT_FORMATS, what="output format", key="output_format")
    if "dicom_seg" in formats:
        if task == "classification":
            raise ConfigError("output_format=dicom_seg applies to segmentation checkpoints; this one classifies.",
                              hint="drop dicom_seg from output_format.")
        require_highdicom()
    return [str(f) for f in formats]


def _organ_key(name: str) -> str:
    """Lookup key of a label name: lower case, runs of other characters as ``_``, a leading side moved to the end
    (``'Left Kidney'`` -> ``kidney_left``)."""
    key = "_".join(re.findall(r"[a-z0-9]+", str(name).casefold()))
    for side in ("left", "right"):
        if key.startswith(side + "_"):
            key = f"{key[len(side) + 1:]}_{side}"
    return key


def organ_code_table(value: Any) -> dict[str, dict[str, str | None]]:
    """Validate ``dicom_seg.organ_codes`` (label name -> ``{code, meaning, laterality}``) and return it keyed by
    normalised label name.

    Raises:
        ConfigError: an entry is not a mapping, its code is not a SNOMED CT concept id (digits), its meaning is
            empty or its laterality is not left/right.
    """
    table: dict[str, dict[str, str | None]] = {}
    for name, entry in dict(value or {}).items():
        key = f"dicom_seg.organ_codes.{name}"
        hint = 'give {code: "<SNOMED CT concept id>", meaning: <its display name>, laterality: left|right|null}.'
        if not isinstance(entry, Mapping) or set(entry) - {"code", "meaning", "laterality"}:
            raise ConfigError(f"{key} must be a mapping with the keys code, meaning and (optional) laterality; got "
                              f"{entry!r}.", hint=hint)
        code, meaning = str(entry.get("code") or "").strip(), str(entry.get("meaning") or "").strip()
        side = entry.get("laterality")
        if not code.isdigit() or not meaning:
            raise ConfigError(f"{key} needs a numeric SNOMED CT code and a meaning; got code={entry.get('code')!r}, "
                              f"meaning={entry.get('meaning')!r}.", hint=hint)
        if side is not None and str(side) not in ("left", "right"):
            raise ConfigError(f"{key}.laterality must be left, right or null; got {side!r}.", hint=hint)
        table[_organ_key(str(name))] = {"code": code, "meaning": meaning,
                                        "laterality": None if side is None else str(side)}
    return table


def _segment_codes(name: str, table: Mapping[str, Mapping[str, str | None]], hd: Any):
    """``(category, type, laterality modifier or None)`` of the segment of label ``name``."""
    from pydicom.sr.codedict import codes

    entry = table.get(_organ_key(name))
    if entry is None:
        return codes.SCT.AnatomicalStructure, codes.SCT.AnatomicalStructure, None
    kind = hd.sr.CodedConcept(value=str(entry["code"]), scheme_designator="SCT", meaning=str(entry["meaning"]))
    side = {"left": codes.SCT.Left, "right": codes.SCT.Right, None: None}[entry["laterality"]]
    return codes.SCT.AnatomicalStructure, kind, side


def require_highdicom():
    """Import highdicom.

    Raises:
        ConfigError: it is not installed (the message names the ``dicom-seg`` extra).
    """
    if importlib.util.find_spec("highdicom") is None:
        raise ConfigError("output_format=dicom_seg needs the 'highdicom' package, which is not installed.",
                          hint=_EXTRA_HINT)
    import highdicom

    return highdicom


def is_dicom_input(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM series (a folder or a DICOM file), as ``medeff.io.read_image`` decides."""
    from medeff.io.api import image_format

    try:
        return image_format(path) == "dicom"
    except InputError:
        return False


def _source_datasets(source: Path) -> list:
    import pydicom

    from medeff.io.dicom import select_series
    from medeff.io.dicom_scan import find_series

    series = find_series(source)
    if not series:
        raise InputError(f"'{source}' holds no DICOM image series; no DICOM SEG can reference it.",
                         hint="use output_format=[nifti] for this input.", path=str(source))
    info = select_series(series, folder=source if source.is_dir() else source.parent)
    datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in info.files]
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise InputError(f"'{source}' is a multi-frame (enhanced) series; DICOM SEG output supports single-frame "
                         "series only.", hint="use output_format=[nifti] for this input.", path=str(source))
    return datasets


def source_frames(mask: np.ndarray, affine_ras: np.ndarray, datasets: Sequence[Any], *,
                  source: str = "") -> np.ndarray:
    """Cut a label volume into one ``(rows, columns)`` frame per source slice, voxel for voxel.

    Args:
        mask: label values indexed ``[i, j, k]`` (the NIfTI array of the prediction).
        affine_ras: its voxel -> RAS affine (the input's own geometry).
        datasets: source slice headers (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, Rows, Columns).
        source: name of the input for messages.

    Returns:
        ``(len(datasets), rows, columns)`` label frames in the order of ``datasets``.

    Raises:
        InputError: a source pixel does not fall on a voxel of the mask (the series was resampled when read,
            e.g. a gantry tilt or an interpolated gap), so the SEG cannot be aligned with it.
    """
    inv = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64))
    frames = []
    for ds in datasets:
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        rows, cols = int(ds.Rows), int(ds.Columns)
        origin = inv[:3, :3] @ ipp + inv[:3, 3]
        per_row = inv[:3, :3] @ (iop[3:] * dr)
        per_col = inv[:3, :3] @ (iop[:3] * dc)
        steps = np.stack([origin, per_row, per_col])
        if np.abs(steps - np.round(steps)).max() > 1e-2:
            raise InputError(f"The slices of '{source}' do not lie on the voxel grid of the predicted mask (the "
                             "series was resampled when read), so a DICOM SEG cannot reference them frame by frame.",
                             hint="use output_format=[nifti] for this input.", path=source or None)
        o, a, b = (np.round(s).astype(np.int64) for s in steps)
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        idx = [o[d] + a[d] * r + b[d] * c for d in range(3)]
        if any(ix.min() < 0 or ix.max() >= n for ix, n in zip(idx, mask.shape)):
            raise InputError(f"A slice of '{source}' reaches outside the predicted mask.",
                             hint="use output_format=[nifti] for this input.", path=source or None)
        frames.append(mask[idx[0], idx[1], idx[2]])
    return np.stack(frames)


def _sanitised(datasets: Sequence[Any], patient_id: str) -> list:
    """Copies of the source headers with the identifiers removed or blanked (highdicom copies the patient and
    study modules from them); empty SOP class / instance UIDs are repaired from the file meta header."""
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        meta = getattr(ds, "file_meta", None)
        for tag, meta_tag in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(tag, "") or "") and meta is not None and str(meta.get(meta_tag, "") or ""):
                setattr(ds, tag, meta.get(meta_tag))
                log.info("DICOM SEG: empty %s of a source slice taken from its file meta header.", tag)
        for tag in IDENTIFYING_TAGS:
            if tag in ds and tag not in _BLANKED and tag != "PatientID":
                delattr(ds, tag)
        for tag, value in _BLANKED.items():
            setattr(ds, tag, value)
        ds.PatientID = patient_id
        out.append(ds)
    return out


def _tokens(text: str) -> tuple[str, ...]:
    """Letters-and-digits runs of ``text``, case-folded: ``'Doe^John 12345'`` -> ``('doe', 'john', '12345')``."""
    return tuple(t.casefold() for t in _TOKEN.findall(text))


def _identifying_values(datasets: Sequence[Any]) -> set[tuple[str, ...]]:
    """The identifying values of the source headers, as token sequences (values of 4 characters or more; names
    also by their components)."""
    values: set[tuple[str, ...]] = set()
    for ds in datasets:
        for tag in IDENTIFYING_TAGS:
            raw = ds.get(tag)
            items = raw if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else [raw]
            for item in items:
                text = str(item or "").strip()
                parts = [text] + ([p for p in text.replace("=", "^").split("^")] if tag.endswith("Name") else [])
                values.update(_tokens(p) for p in parts if len(p.strip()) >= 4 and _tokens(p))
    return values


def _contains(tokens: tuple[str, ...], value: tuple[str, ...]) -> bool:
    n = len(value)
    return any(tokens[i:i + n] == value for i in range(len(tokens) - n + 1))


def _leaks(ds: Any, values: set[tuple[str, ...]], pseudonym: str | None = None) -> str | None:
    """The keyword of the first element of ``ds`` (nested sequences included) that carries a source identifier,
    or None.

    * An identifying attribute (:data:`IDENTIFYING_TAGS`) must be empty or absent; ``PatientID`` must be
      ``pseudonym``.
    * Text elements (names, descriptions, codes, ...) must not hold an identifying value as a whole value or as a
      run of whole tokens (``'Doe'`` in ``'liver of John Doe'``, ``'12345'`` in ``'case 12345'``). Matching whole
      tokens, not substrings, keeps a 4-digit ID from matching inside a longer number by chance.
    * Elements medeff and highdicom generate are not searched: dates, times, numbers and UIDs (VRs DA, TM, DT,
      IS, DS, UI and the binary VRs). They are derived from the clock, counters and random UIDs, which contain
      any short number now and then (a RequestingPhysician '3600' inside ContentTime '133600').
    """
    for elem in ds.iterall():
        keyword = elem.keyword
        if keyword == "PatientID":  # generated: the keyed-hash pseudonym
            if pseudonym is not None and str(elem.value or "") != pseudonym:
                return keyword
            continue
        if keyword in IDENTIFYING_TAGS and elem.VR != "SQ" and str(elem.value or "").strip():
            return keyword
        if elem.VR not in _TEXT_VRS or elem.value in (None, "") or not values:
            continue
        items = elem.value if elem.VM > 1 else [elem.value]
        tokens = _tokens(" ".join(str(v) for v in items))
        if any(_contains(tokens, v) for v in values):
            return keyword or str(elem.tag)
    return None


def write_dicom_seg(mask: np.ndarray, affine_ras: np.ndarray, source: str | Path, out_path: str | Path, *,
                    label_names: Sequence[str], pseudonym_salt: str | None = None,
                    series_description: str = "medeff segmentation", series_number: int = 990,
                    organ_codes: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``mask`` as a binary DICOM SEG referencing the DICOM series it was predicted from.

    Args:
        mask: integer labels ``[i, j, k]`` on the input's grid (value ``v`` = ``label_names[v]``; 0 = background).
        affine_ras: voxel -> RAS affine of ``mask`` (the input's).
        source: the DICOM folder (or file) that was segmented.
        out_path: the ``.dcm`` file to write (atomically).
        label_names: names of the label values; one segment per non-background label, numbered by value.
        pseudonym_salt: salt of the PatientID pseudonym (see the module docstring); None: random.
        series_description: SeriesDescription of the SEG.
        series_number: SeriesNumber of the SEG.
        organ_codes: SNOMED CT codes of known organs (``dicom_seg.organ_codes``, see :func:`organ_code_table`);
            labels not in it, or all labels when None, get the generic type Anatomical Structure.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        ConfigError: highdicom is missing, or ``organ_codes`` is malformed.
        InputError: the source is no single-frame DICOM series or its slices are not on the mask's grid.
        OutputWriteError: a source identifier would have been written (nothing is written then).
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    from medeff import __version__
    from medeff.utils.pseudonyms import Pseudonymiser

    source = Path(source)
    datasets = _source_datasets(source)
    frames = source_frames(np.asarray(mask), affine_ras, datasets, source=str(source))
    names = list(label_names)
    if int(frames.max(initial=0)) >= max(len(names), 1):
        raise InputError(f"The mask of '{source}' holds label {int(frames.max())}, but the checkpoint names only "
                         f"{len(names)} labels.", hint="check the checkpoint's label_names.", path=str(source))
    pseudonym = Pseudonymiser(pseudonym_salt, prefix="grp_")(str(datasets[0].get("PatientID", "") or ""))
    algorithm = hd.AlgorithmIdentificationSequence(name="medeff", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    table = organ_code_table(organ_codes)
    descriptions = []
    for v in range(1, len(names)):
        category, kind, side = _segment_codes(str(names[v]), table, hd)
        desc = hd.seg.SegmentDescription(segment_number=v, segment_label=str(names[v])[:64],
                                         segmented_property_category=category, segmented_property_type=kind,
                                         algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                         algorithm_identification=algorithm)
        if side is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(value=side.value, scheme_designator=side.scheme_designator, meaning=side.meaning)]
        descriptions.append(desc)
    if not descriptions:
        raise InputError("The checkpoint has no foreground label; a DICOM SEG needs at least one segment.",
                         hint="use output_format=[nifti].")
    dtype = np.uint8 if len(names) < 256 else np.uint16
    seg = hd.seg.Segmentation(
        source_images=_sanitised(datasets, pseudonym), pixel_array=frames.astype(dtype),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=int(series_number), sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="medeff", manufacturer_model_name="medeff predict",
        software_versions=str(__version__), device_serial_number="none", series_description=series_description,
        content_label="MEDEFF", content_description="medeff automatic segmentation")
    leak = _leaks(seg, _identifying_values(datasets), pseudonym)
    if leak is not None:
        raise OutputWriteError(f"The DICOM SEG for '{source.name}' would contain an identifying value of the "
                               f"source headers (in {leak}); it was not written.",
                               hint="if that element is your dicom_seg.series_description, remove the name or ID "
                               "from it; otherwise report this as a medeff bug and use output_format=[nifti] "
                               "meanwhile.")
    buf = io.BytesIO()
    seg.save_as(buf)
    out_path = Path(out_path)
    with atomic_path(out_path, overwrite=overwrite) as tmp:
        tmp.write_bytes(buf.getvalue())
    log.info("Wrote %s (%d frames, %d segments)", out_path, int(seg.NumberOfFrames), len(descriptions))
    return out_path


def write_seg_outputs(masks: list[dict[str, Any]], records: Sequence[Mapping[str, Any]], out_dir: Path,
                      label_names: Sequence[str], options: Mapping[str, Any] | None, overwrite: bool) -> list[str]:
    """``medeff predict``'s ``dicom_seg`` output: a ``<case>_seg.dcm`` beside each mask of a DICOM input.

    Adds ``"dicom_seg": path`` to the mask entries it writes; inputs that are not DICOM are logged and skipped, and
    a series the SEG cannot be aligned with (resampled when read) gets ``"dicom_seg_error"`` instead.

    Returns:
        The written paths.
    """
    import nibabel as nib

    opts = dict(options or {})
    sources = {str(r["case_id"]): r["image"] for r in records}
    written = []
    for entry in masks:
        src = sources.get(str(entry["case_id"]))
        if src is None or isinstance(src, (list, tuple)) or not is_dicom_input(src):
            log.warning("Case %s is not a DICOM series: no DICOM SEG written for it (the NIfTI mask is).",
                        entry["case_id"])
            continue
        nii = nib.load(entry["mask"])
        try:
            path = write_dicom_seg(np.asarray(nii.dataobj), nii.affine, src, out_dir / f"{entry['case_id']}_seg.dcm",
                                   label_names=label_names, pseudonym_salt=opts.get("pseudonym_salt"),
                                   series_description=str(opts.get("series_description") or "medeff segmentation"),
                                   series_number=int(opts.get("series_number") or 990),
                                   organ_codes=opts.get("organ_codes"), overwrite=overwrite)
        except InputError as exc:  # this case only: its NIfTI mask stands, the reason goes to predictions.json
            log.warning("No DICOM SEG for case %s: %s", entry["case_id"], exc)
            entry["dicom_seg_error"] = str(exc)
            continue
        entry["dicom_seg"] = str(path)
        written.append(str(path))
    return written
