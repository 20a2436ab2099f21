"""Cohort manifests: validation, paths, patient-level splits (:mod:`.manifest`); the run's cohort
table (:mod:`.table`); the pipeline stage (:mod:`.stage`)."""

from __future__ import annotations

from pathosae.cohort.manifest import (
    REQUIRED_COLUMNS,
    SPLITS,
    assign_splits,
    build_cohort,
    errors_table,
    read_manifest,
    tcga_fields,
    validate_manifest,
)
from pathosae.cohort.table import load_cohort

__all__ = [
    "REQUIRED_COLUMNS",
    "SPLITS",
    "assign_splits",
    "build_cohort",
    "errors_table",
    "load_cohort",
    "read_manifest",
    "tcga_fields",
    "validate_manifest",
]
