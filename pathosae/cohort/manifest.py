"""Cohort manifests: validate a CSV before any work, resolve paths, split by patient.

Every problem is reported at once, each naming the row (spreadsheet numbering: the header is row
1), the column and the fix. Under ``on_error="skip"`` bad rows are dropped and listed instead.

Only ``slide_id`` is always required. Slide files are needed only by the stages that read pixels
(tile, embed): with ``need_slides=False`` a manifest without a ``path`` column, an empty path or a
file that is not there is accepted, and the slide is recorded with ``slide_available`` False (a
features-only cohort, whose features come from ``pathosae import-features``). The label and
confounder columns are checked by the stages that use them (:mod:`pathosae.stage_needs`); the
values of those present are checked here.
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
from pathosae.schema import PATH, PATIENT_ID, SLIDE_AVAILABLE, SLIDE_ID, SPLIT
from pathosae.slides import open_slide
from pathosae.types import OnError

REQUIRED_COLUMNS = (SLIDE_ID,)
PIXEL_COLUMNS = (PATH,)  # required as well when the tile or embed stage is to run
FEATURES_ONLY_FIX = (
    "import the slides' features with `pathosae import-features --format trident DIR --run RUN` "
    "and run the stages after embedding (`pathosae run --out RUN --from sae`), or add a 'path' "
    "column with each slide's file to the manifest and rerun `pathosae cohort`"
)
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
    need_slides: bool = True,
) -> tuple[pd.DataFrame, list[RowError]]:
    """Validate a manifest and return (cohort table, errors of the rows that were skipped).

    Column-level problems always raise. Row-level problems raise under ``on_error="stop"`` (all
    of them together) and drop the bad rows under ``"skip"``. ``need_slides`` (the tile or embed
    stage is to run) makes a missing ``path`` column, an empty path or a missing file an error;
    without it such slides are kept with ``slide_available`` False.
    """
    manifest = Path(manifest)
    frame = read_manifest(manifest)
    _check_columns(manifest, frame, need_slides)
    frame = frame.copy()
    frame["manifest_row"] = np.arange(len(frame)) + 2
    if PATIENT_ID not in frame.columns:
        frame[PATIENT_ID] = frame[SLIDE_ID]
    frame.loc[frame[PATIENT_ID] == "", PATIENT_ID] = frame[SLIDE_ID]
    if PATH not in frame.columns:
        frame[PATH] = ""
    frame[PATH] = [resolve_path(manifest, p) for p in frame[PATH]]

    errors = [
        *_check_ids(frame),
        *_check_paths(frame, cfg, check_slides, need_slides),
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
    cohort[SLIDE_AVAILABLE] = [slide_file_present(p) for p in cohort[PATH]]
    return cohort.reset_index(drop=True), sorted(errors, key=_error_order)


def slide_file_present(path: object) -> bool:
    """True when a cohort row's path names an existing file (False for a features-only slide)."""
    return isinstance(path, str) and bool(path) and Path(path).is_file()


def _error_order(err: RowError) -> tuple[int, str]:
    return (err.row or 0, err.column or "")


def _check_columns(manifest: Path, frame: pd.DataFrame, need_slides: bool) -> None:
    errors = []
    found = ", ".join(frame.columns) or "none"
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            errors.append(RowError(1, column, f"required column is missing (found: {found})",
                                   f"add a '{column}' column to the header"))
    if need_slides and PATH not in frame.columns:
        errors.append(missing_path_column(found))
    if len(frame) == 0 and not errors:
        errors.append(RowError(None, None, "the manifest has no rows", "add one row per slide"))
    if errors:
        raise ManifestError(str(manifest), errors)


def missing_path_column(found: str) -> RowError:
    """The error of a manifest without slide paths when a stage that reads pixels is to run."""
    return RowError(
        1, PATH, f"the tile and embed stages read the slide files, but the manifest has no "
        f"'{PATH}' column (found: {found})",
        f"add a '{PATH}' column with each slide's file; or, for a cohort with features only, "
        "leave tile and embed out: `pathosae cohort`, then `pathosae import-features`, then "
        "`pathosae run --out RUN --from sae`",
    )


def resolve_path(manifest: Path, value: str) -> str:
    """A manifest path made absolute (relative ones from the manifest's folder); '' stays ''."""
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


def _check_paths(
    frame: pd.DataFrame, cfg: CohortConfig, check_slides: bool, need_slides: bool
) -> list[RowError]:
    errors = []
    extensions = {e.lower() for e in cfg.extensions}
    for row, slide_id, path in zip(
        frame["manifest_row"], frame[SLIDE_ID], frame[PATH], strict=True
    ):
        if not need_slides and not (path and Path(path).exists()):
            continue  # a features-only slide: recorded with slide_available False
        error = _path_error(row, slide_id, path, extensions, check_slides)
        if error is not None:
            errors.append(error)
    return errors


def _path_error(
    row: int, slide_id: str, path: str, extensions: set[str], check_slides: bool
) -> RowError | None:
    if not path:
        return RowError(row, PATH, "empty path", "give the slide file's path, or import the "
                        "slide's features with `pathosae import-features` and leave tile and "
                        "embed out", slide_id)
    file = Path(path)
    suffix = "".join(file.suffixes[-2:]).lower() if file.name.lower().endswith(
        (".ome.tif", ".ome.tiff")
    ) else file.suffix.lower()
    if suffix not in extensions and file.suffix.lower() not in extensions:
        return RowError(
            row,
            PATH,
            f"unsupported file type {file.suffix or '(none)'!r} for {path}",
            f"use a slide format OpenSlide reads ({', '.join(sorted(extensions))}) or add the "
            "extension to cohort.extensions",
            slide_id,
        )
    if not file.exists():
        return RowError(
            row, PATH, f"file not found: {path}", "correct the path (relative paths are "
            "resolved from the manifest's folder), or import the slide's features with "
            "`pathosae import-features` and leave tile and embed out", slide_id,
        )
    if not file.is_file() or not os.access(file, os.R_OK):
        return RowError(row, PATH, f"not a readable file: {path}", "check permissions", slide_id)
    if check_slides:
        try:
            open_slide(file, slide_id).close()
        except SlideError as exc:
            return RowError(row, PATH, f"{exc.reason}: {path}", exc.fix or "replace the file",
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
    if not cfg.label or cfg.label not in frame.columns:
        return []  # a missing label column is the error of the stages that use it
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
    has_label = cfg.label is not None and cfg.label in todo.columns
    strata = todo[cfg.label] if has_label else pd.Series("all", index=todo.index)
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
    run: RunDir, manifest: str | os.PathLike[str], cfg: PathosaeConfig, on_error: OnError,
    need_slides: bool = False,
) -> dict[str, object]:
    """Validate the manifest and write RUN/cohort.parquet (and the skipped rows' errors).

    ``need_slides``: the tile or embed stage runs next, so every slide file must be there.
    """
    cohort, errors = validate_manifest(manifest, cfg.cohort, on_error, seed=cfg.seed,
                                       need_slides=need_slides)
    write_parquet_atomic(run.cohort_path, cohort)
    write_text_atomic(run.cohort_errors_path, errors_table(errors).to_csv(index=False))
    absent = cohort.loc[~cohort[SLIDE_AVAILABLE], SLIDE_ID].astype(str).tolist()
    return {
        "n_slides": len(cohort),
        "n_patients": int(cohort[PATIENT_ID].nunique()),
        "splits": {k: int(v) for k, v in cohort[SPLIT].value_counts().sort_index().items()},
        "skipped": [e.slide_id or f"row {e.row}" for e in errors],
        "manifest_sha256": sha256_file(manifest),
        "n_slides_unavailable": len(absent),
        "slides_unavailable": absent[:SUMMARY_IDS],
    }


SUMMARY_IDS = 10  # slide ids listed in a summary (run.json stays small on large cohorts)


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
