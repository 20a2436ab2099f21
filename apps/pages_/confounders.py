"""Confounders page: unit × metadata heatmap, leakage (raw / SAE codes / residual) and baselines,
PathoROB, and the confounder directions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from pages_.common import missing
from pathosae.app import RunView
from pathosae.app.units import best_associations
from pathosae.schema import ASSOCIATIONS, DIRECTIONS_JSON, LEAKAGE, PATHOROB, SUMMARY

TOP_UNITS = 40


def render(view: RunView) -> None:
    st.header("Confounders")
    if missing(view, "confounders"):
        return
    summary = view.json("confounders", SUMMARY) or {}
    flagged = summary.get("flagged_units", {})
    if flagged:
        cols = st.columns(len(flagged))
        for col, (variable, n) in zip(cols, sorted(flagged.items()), strict=True):
            col.metric(f"units flagged for {variable}", n)
    heatmap(view)
    leakage(view)
    directions(view)


def heatmap(view: RunView) -> None:
    st.subheader("Units × metadata (−log10 q, slide level)")
    best = best_associations(view.table("confounders", ASSOCIATIONS))
    if best.empty:
        st.info("The association table is empty.")
        return
    wide = best.pivot(index="unit", columns="variable", values="q")
    top = wide.min(axis=1).nsmallest(TOP_UNITS).index
    score = -np.log10(wide.loc[top].clip(lower=1e-300))
    score.index = [f"unit {u}" for u in score.index]
    st.dataframe(score.style.background_gradient(cmap="Reds", axis=None).format("{:.2f}"),
                 key="unit_heatmap")
    figure = view.file("confounders", "heatmap.png")
    if figure is not None:
        st.image(str(figure), caption="heatmap.png (written by the confounders stage)")


def leakage(view: RunView) -> None:
    st.subheader("Leakage: how well a probe recovers each column")
    table = view.table("confounders", LEAKAGE)
    if table is None or table.empty:
        st.info("No leakage table.")
        return
    value = "balanced_accuracy" if "balanced_accuracy" in table else "auroc"
    wide = table.pivot_table(index=["variable", "scheme", "subset"], columns="representation",
                             values=value, aggfunc="mean")
    chance = table.groupby(["variable", "scheme", "subset"])[f"chance_{value}"].mean() \
        if f"chance_{value}" in table else None
    if chance is not None:
        wide["chance"] = chance
    st.caption(f"{value.replace('_', ' ')}: raw embedding, SAE codes, SAE residual and baselines")
    st.dataframe(wide.reset_index(), hide_index=True, key="leakage_table")
    figure = view.file("confounders", "leakage.png")
    if figure is not None:
        st.image(str(figure), caption="leakage.png")
    pathorob = view.table("confounders", PATHOROB)
    if pathorob is not None and not pathorob.empty:
        st.subheader("PathoROB")
        keep = [c for c in ("representation", "label", "confounder", "robustness_index",
                            "clustering_score", "confounder_auroc") if c in pathorob]
        st.dataframe(pathorob[keep], hide_index=True, key="pathorob_table")


def directions(view: RunView) -> None:
    st.subheader("Confounder directions")
    info = view.json("confounders", DIRECTIONS_JSON)
    if not info:
        st.info("No directions file.")
        return
    rows = []
    for name, shape in sorted(info.get("tensors", {}).items()):
        variable, _, kind = name.partition(".")
        described = info.get("variables", {}).get(variable, {})
        rows.append({"variable": variable, "tensor": kind, "shape": " × ".join(map(str, shape)),
                     "meaning": described.get(kind.split(".")[0], "")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="directions_table")
    arrays = view.directions()
    units = {k.split(".")[0]: v.astype(int).tolist() for k, v in arrays.items()
             if k.endswith(".flagged_units")}
    for variable, ids in sorted(units.items()):
        st.markdown(f"**{variable}**: flagged units {', '.join(map(str, ids[:50])) or 'none'}")
