"""Cohort page: slides with their metadata, QC thumbnails, label/site/scanner cross-tabulation."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages_.common import missing
from pathosae.app import RunView
from pathosae.schema import PATH, PATIENT_ID, SLIDE_ID

QC_COLUMNS = 6
QC_MAX = 24


def render(view: RunView) -> None:
    st.header("Cohort")
    if missing(view, "cohort"):
        return
    cohort = view.cohort
    label = view.label_column
    counts = {"slides": len(cohort), "patients": cohort[PATIENT_ID].nunique()}
    for column, value in counts.items():
        st.sidebar.metric(column, value)
    st.subheader(f"{len(cohort)} slides, {cohort['patient_id'].nunique()} patients")
    st.dataframe(cohort.drop(columns=[PATH], errors="ignore"), hide_index=True,
                 key="cohort_table")
    crosstabs(cohort, label, view.metadata_columns())
    qc_gallery(view)


def crosstabs(cohort: pd.DataFrame, label: str | None, columns: list[str]) -> None:
    st.subheader("Cross-tabulation")
    usable = [c for c in columns if cohort[c].nunique() <= 30]
    if len(usable) < 2:
        st.info("Fewer than two categorical metadata columns to cross-tabulate.")
        return
    default_rows = label if label in usable else usable[0]
    rest = [c for c in usable if c != default_rows]
    default_cols = "site" if "site" in rest else rest[0]
    left, right = st.columns(2)
    rows = left.selectbox("Rows", usable, index=usable.index(default_rows), key="xtab_rows")
    cols = right.selectbox("Columns", [c for c in usable if c != rows],
                           index=max(0, [c for c in usable if c != rows].index(default_cols))
                           if default_cols != rows else 0, key="xtab_cols")
    table = pd.crosstab(cohort[rows].astype(str), cohort[cols].astype(str), margins=True,
                        margins_name="total")
    st.dataframe(table, key="xtab")
    if "scanner" in cohort and "site" in cohort and {rows, cols} != {"site", "scanner"}:
        st.caption("site × scanner")
        st.dataframe(pd.crosstab(cohort["site"].astype(str), cohort["scanner"].astype(str)))


def qc_gallery(view: RunView) -> None:
    st.subheader("Tissue detection and tiles (QC)")
    if not view.any_slide_available():
        st.info("The slides are not available in this run (a features-only cohort: its features "
                "were imported with `pathosae import-features`), so there are no QC images. "
                "Add a path column to the manifest to tile the slides.")
        return
    if missing(view, "tile"):
        return
    ids = list(view.cohort[SLIDE_ID])
    shown = ids[:QC_MAX]
    if len(ids) > QC_MAX:
        shown = st.multiselect("Slides", ids, default=ids[:QC_MAX], key="qc_slides")
    cols = st.columns(QC_COLUMNS)
    for i, slide_id in enumerate(shown):
        path = view.qc_image(slide_id)
        if path is None:
            cols[i % QC_COLUMNS].caption(f"{slide_id}: no QC image")
        else:
            cols[i % QC_COLUMNS].image(str(path), caption=slide_id, width="stretch")
