"""Cohort manifests: validate a CSV before any work, resolve paths, split by patient.

Every problem is reported at once, each naming the row (spreadsheet numbering: the header is row
1), the column and the fix. Under ``on_error="skip"`` bad rows are dropped and listed instead.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pathosae.config import CohortConfig, PathosaeConfig
from pathosae.errors import ManifestError, RowError, SlideError
from pathosae.io import sha256_file, write_parquet_atomic, write_text_atomic
from pathosae.run import RunDir
from pathosae.schema import PATIENT_ID, SLIDE_ID, SPLIT
from pathosae.slides import open_slide
from pathosae.types import OnError

REQUIRED_COLUMNS = (SLIDE_ID, "path")
SPLITS = ("train", "val", "test")
# slide ids become file names (tiles/<slide_id>.h5), so they must be safe as one.
_SAFE_ID = re.compile(r"^[^/\\\x00]+$")


def read_manifest(manifest: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a manifest CSV as strings; a file that is not a readable CSV is a ManifestError."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(
            str(manifest),
            [RowError(None, None, "the manifest file does not exist", "pass an existing CSV")],
        )
    try:
        frame = pd.read_csv(
            manifest, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8"
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(
            str(manifest),
            [
                RowError(
                    None,
                    None,
                    f"not a readable CSV ({type(exc).__name__}: {str(exc).strip()[:200]})",
                    "save the manifest as UTF-8 CSV with a header row, one row per slide",
                )
            ],
        ) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda col: col.str.strip())


def validate_manifest(
    manifest: str | os.PathLike[str],
    cfg: CohortConfig,
    on_error: OnError = "stop",
    seed: int = 0,
    check_slides: bool = True,
) -> tuple[pd.DataFrame, list[RowError]]:
    """Validate a manifest and return (cohort table, errors of the rows that were skipped).

    Column-level problems always raise. Row-level problems raise under ``on_error="stop"`` (all
    of them together) and drop the bad rows under ``"skip"``.
    """
    manifest = Path(manifest)
    frame = read_manifest(manifest)
    _check_columns(manifest, frame, cfg)
    frame = frame.copy()
    frame["manifest_row"] = np.arange(len(frame)) + 2
    if PATIENT_ID not in frame.columns:
        frame[PATIENT_ID] = frame[SLIDE_ID]
    frame.loc[frame[PATIENT_ID] == "", PATIENT_ID] = frame[SLIDE_ID]
    frame["path"] = [_resolve_path(manifest, p) for p in frame["path"]]

    errors = [
        *_check_ids(frame),
        *_check_paths(frame, cfg, check_slides),
        *_check_mpp(frame),
        *_check_labels(frame, cfg),
        *_check_split_column(frame),
    ]
    if errors and on_error == "stop":
        raise ManifestError(str(manifest), sorted(errors, key=_error_order))
    bad_rows = {e.row for e in errors}
    cohort = frame[~frame["manifest_row"].isin(bad_rows)].copy()
    if cohort.empty:
        raise ManifestError(
            str(manifest),
            [*errors, RowError(None, None, "no valid slide left", "fix the rows listed above")],
        )
    cohort["mpp"] = pd.to_numeric(cohort.get("mpp", pd.Series(dtype=str)), errors="coerce")
    if "mpp" not in frame.columns:
        cohort["mpp"] = np.nan
    cohort[SPLIT] = assign_splits(cohort, cfg, seed)
    return cohort.reset_index(drop=True), sorted(errors, key=_error_order)


def _error_order(err: RowError) -> tuple[int, str]:
    return (err.row or 0, err.column or "")


def _check_columns(manifest: Path, frame: pd.DataFrame, cfg: CohortConfig) -> None:
    errors = []
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            errors.append(
                RowError(
                    1,
                    column,
                    f"required column is missing (found: {', '.join(frame.columns) or 'none'})",
                    f"add a '{column}' column to the header",
                )
            )
    declared = [c for c in [cfg.label, *cfg.confounders] if c]
    for column in declared:
        if column not in frame.columns:
            errors.append(
                RowError(
                    1,
                    column,
                    "the config names this column but the manifest has none",
                    f"add a '{column}' column, or change cohort.label / cohort.confounders in "
                    "the config",
                )
            )
    if len(frame) == 0 and not errors:
        errors.append(RowError(None, None, "the manifest has no rows", "add one row per slide"))
    if errors:
        raise ManifestError(str(manifest), errors)


def _resolve_path(manifest: Path, value: str) -> str:
    if not value:
        return ""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = manifest.resolve().parent / path
    return os.path.normpath(path)


def _check_ids(frame: pd.DataFrame) -> list[RowError]:
    errors = []
    seen: dict[str, int] = {}
    for row, slide_id in zip(frame["manifest_row"], frame[SLIDE_ID], strict=True):
        if not slide_id:
            errors.append(RowError(row, SLIDE_ID, "empty slide id", "give every slide an id"))
            continue
        if not _SAFE_ID.match(slide_id) or slide_id.startswith("."):
            errors.append(
                RowError(
                    row,
                    SLIDE_ID,
                    f"slide id {slide_id!r} cannot be used as a file name",
                    "use an id without '/', '\\' or a leading '.'",
                    slide_id,
                )
            )
        if slide_id in seen:
            errors.append(
                RowError(
                    row,
                    SLIDE_ID,
                    f"duplicate slide id (first used on row {seen[slide_id]})",
                    "make slide ids unique",
                    slide_id,
                )
            )
        else:
            seen[slide_id] = row
    return errors


def _check_paths(frame: pd.DataFrame, cfg: CohortConfig, check_slides: bool) -> list[RowError]:
    errors = []
    extensions = {e.lower() for e in cfg.extensions}
    for row, slide_id, path in zip(
        frame["manifest_row"], frame[SLIDE_ID], frame["path"], strict=True
    ):
        error = _path_error(row, slide_id, path, extensions, check_slides)
        if error is not None:
            errors.append(error)
    return errors


def _path_error(
    row: int, slide_id: str, path: str, extensions: set[str], check_slides: bool
) -> RowError | None:
    if not path:
        return RowError(row, "path", "empty path", "give the slide file's path", slide_id)
    file = Path(path)
    suffix = "".join(file.suffixes[-2:]).lower() if file.name.lower().endswith(
        (".ome.tif", ".ome.tiff")
    ) else file.suffix.lower()
    if suffix not in extensions and file.suffix.lower() not in extensions:
        return RowError(
            row,
            "path",
            f"unsupported file type {file.suffix or '(none)'!r} for {path}",
            f"use a slide format OpenSlide reads ({', '.join(sorted(extensions))}) or add the "
            "extension to cohort.extensions",
            slide_id,
        )
    if not file.exists():
        return RowError(
            row, "path", f"file not found: {path}", "correct the path (relative paths are "
            "resolved from the manifest's folder)", slide_id,
        )
    if not file.is_file() or not os.access(file, os.R_OK):
        return RowError(row, "path", f"not a readable file: {path}", "check permissions", slide_id)
    if check_slides:
        try:
            open_slide(file, slide_id).close()
        except SlideError as exc:
            return RowError(row, "path", f"{exc.reason}: {path}", exc.fix or "replace the file",
                            slide_id)
    return None


def _check_mpp(frame: pd.DataFrame) -> list[RowError]:
    if "mpp" not in frame.columns:
        return []
    errors = []
    for row, slide_id, value in zip(
        frame["manifest_row"], frame[SLIDE_ID], frame["mpp"], strict=True
    ):
        if value == "":
            continue  # the slide's own metadata is used
        try:
            mpp = float(value)
        except ValueError:
            mpp = math.nan
        if not math.isfinite(mpp) or mpp <= 0:
            errors.append(
                RowError(
                    row,
                    "mpp",
                    f"mpp must be a positive number of µm per pixel, got {value!r}",
                    "write e.g. 0.25 (40x) or 0.5 (20x), or leave it empty to use the slide's own",
                    slide_id,
                )
            )
    return errors


def _check_labels(frame: pd.DataFrame, cfg: CohortConfig) -> list[RowError]:
    if not cfg.label:
        return []
    errors = []
    label = cfg.label
    for row, slide_id, value in zip(
        frame["manifest_row"], frame[SLIDE_ID], frame[label], strict=True
    ):
        if value == "" or value.lower() in ("nan", "na", "none", "null"):
            errors.append(
                RowError(
                    row,
                    label,
                    "empty label",
                    f"fill in '{label}', or drop the slide from the manifest",
                    slide_id,
                )
            )
    labelled = frame[frame[label] != ""]
    for patient, group in labelled.groupby(PATIENT_ID, sort=False):
        values = group[label].unique()
        if len(values) > 1:
            first = group.iloc[0]
            for _, item in group.iloc[1:].iterrows():
                if item[label] != first[label]:
                    errors.append(
                        RowError(
                            int(item["manifest_row"]),
                            label,
                            f"patient {patient!r} has label {item[label]!r} here but "
                            f"{first[label]!r} on row {first['manifest_row']}",
                            "a patient has one label: correct it, or use distinct patient_id "
                            "values if these are different patients",
                            item[SLIDE_ID],
                        )
                    )
    return errors


def _check_split_column(frame: pd.DataFrame) -> list[RowError]:
    if SPLIT not in frame.columns:
        return []
    errors = []
    for row, slide_id, value in zip(
        frame["manifest_row"], frame[SLIDE_ID], frame[SPLIT], strict=True
    ):
        if value and value not in SPLITS:
            errors.append(
                RowError(
                    row,
                    SPLIT,
                    f"unknown split {value!r}",
                    "use train, val or test (or leave it empty for the automatic split)",
                    slide_id,
                )
            )
    given = frame[frame[SPLIT].isin(SPLITS)]
    for patient, group in given.groupby(PATIENT_ID, sort=False):
        if group[SPLIT].nunique() > 1:
            row = int(group.iloc[-1]["manifest_row"])
            errors.append(
                RowError(
                    row,
                    SPLIT,
                    f"patient {patient!r} is in several splits ({', '.join(group['split'])})",
                    "put all slides of a patient in one split (splits are by patient)",
                    group.iloc[-1][SLIDE_ID],
                )
            )
    return errors


def assign_splits(cohort: pd.DataFrame, cfg: CohortConfig, seed: int) -> pd.Series:
    """Keep explicit splits; assign the rest by patient, stratified by label, seeded.

    Patients are shuffled within each label and dealt out so each split gets its fraction of
    every label (a slide never shares a patient with another split).
    """
    split = cohort[SPLIT].copy() if SPLIT in cohort.columns else pd.Series("", cohort.index)
    split = split.where(split.isin(SPLITS), "")
    todo = cohort[split == ""]
    if todo.empty:
        return split
    rng = np.random.default_rng(seed)
    fractions = cfg.split
    strata = todo[cfg.label] if cfg.label else pd.Series("all", index=todo.index)
    patient_split: dict[str, str] = {}
    for _, group in todo.groupby(strata, sort=True):
        patients = np.array(sorted(group[PATIENT_ID].unique()), dtype=object)
        rng.shuffle(patients)
        counts = _split_counts(len(patients), fractions.train, fractions.val)
        for i, patient in enumerate(patients):
            name = "train" if i < counts[0] else "val" if i < counts[0] + counts[1] else "test"
            patient_split.setdefault(patient, name)
    split.loc[todo.index] = todo[PATIENT_ID].map(patient_split)
    return split


def _split_counts(n: int, train: float, val: float) -> tuple[int, int]:
    n_train = round(n * train)
    n_val = round(n * val)
    if n >= 3 and val > 0 and n_val == 0:
        n_val = 1
    n_train = min(n_train, n - n_val)
    return n_train, n_val


def errors_table(errors: list[RowError]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"row": e.row, SLIDE_ID: e.slide_id, "column": e.column, "problem": e.message,
             "fix": e.fix}
            for e in errors
        ],
        columns=["row", SLIDE_ID, "column", "problem", "fix"],
    )


def build_cohort(
    run: RunDir, manifest: str | os.PathLike[str], cfg: PathosaeConfig, on_error: OnError
) -> dict[str, object]:
    """Validate the manifest and write RUN/cohort.parquet (and the skipped rows' errors)."""
    cohort, errors = validate_manifest(manifest, cfg.cohort, on_error, seed=cfg.seed)
    write_parquet_atomic(run.cohort_path, cohort)
    write_text_atomic(run.cohort_errors_path, errors_table(errors).to_csv(index=False))
    return {
        "n_slides": len(cohort),
        "n_patients": int(cohort[PATIENT_ID].nunique()),
        "splits": {k: int(v) for k, v in cohort[SPLIT].value_counts().sort_index().items()},
        "skipped": [e.slide_id or f"row {e.row}" for e in errors],
        "manifest_sha256": sha256_file(manifest),
    }


_TCGA_BARCODE = re.compile(r"^TCGA-([A-Z0-9]{2})-([A-Z0-9]{4})(?:-|$)", re.IGNORECASE)


def tcga_fields(barcode: str) -> dict[str, str]:
    """Tissue source site and patient from a TCGA barcode (``TCGA-A2-A0T2-01Z-00-DX1``).

    The site code is the confounder most TCGA studies must control: deep features identify it.
    """
    match = _TCGA_BARCODE.match(Path(barcode).name)
    if match is None:
        raise ValueError(
            f"{barcode!r} is not a TCGA barcode (expected TCGA-XX-XXXX-...). Fix: pass the slide's "
            "barcode, e.g. TCGA-A2-A0T2-01Z-00-DX1"
        )
    site, participant = (g.upper() for g in match.groups())
    return {"site": site, PATIENT_ID: f"TCGA-{site}-{participant}"}
