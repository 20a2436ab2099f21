"""SAE-ception page: metrics across cycles for each variant, controls beside the method."""

from __future__ import annotations

import streamlit as st

from pages_.common import missing
from pathosae.app import RunView
from pathosae.schema import SETTINGS_HASH

HEADLINE = ("bacc_shifted", "worst_site_bacc_shifted", "site_leakage", "bacc_normal",
            "monosemanticity", "silhouette")
CONTROLS = {"no_aux": "control: same training, no auxiliary loss",
            "random_target": "control: random unit targets",
            "plain": "SAE-ception", "injected": "SAE-ception with confounder injection",
            "aware": "SAE-ception with a confounder-aware SAE"}


def render(view: RunView) -> None:
    st.header("SAE-ception")
    if missing(view, "saeception"):
        return
    metrics = view.table("saeception", "metrics.parquet")
    metrics = metrics.drop(columns=[c for c in (SETTINGS_HASH,) if c in metrics])
    variants = list(dict.fromkeys(metrics["variant"]))
    st.markdown("  \n".join(f"**{v}**: {CONTROLS.get(v, '')}" for v in variants))
    available = [m for m in HEADLINE if m in metrics and metrics[m].notna().any()]
    metric = st.selectbox("Metric", available or list(HEADLINE), key="sc_metric")
    means = metrics.groupby(["cycle", "variant"])[metric].mean().unstack("variant")
    st.caption(f"{metric}, mean over {metrics['seed'].nunique()} seed(s), by cycle")
    st.line_chart(means)
    last = metrics[metrics["cycle"] == metrics["cycle"].max()]
    summary = last.groupby("variant")[[m for m in HEADLINE if m in last]].agg(["mean", "std"])
    st.subheader(f"Last cycle ({int(metrics['cycle'].max())})")
    summary.columns = [f"{a} {b}" for a, b in summary.columns]
    st.dataframe(summary.reset_index(), hide_index=True, key="sc_summary")
    st.subheader("All rows")
    st.dataframe(metrics, hide_index=True, key="sc_rows")
    figure = view.file("saeception", "metrics.png")
    if figure is not None:
        st.image(str(figure), caption="metrics.png")
