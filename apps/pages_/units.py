"""Units page: pick a unit, see its tiles, activations, associations, heatmap, neighbours; tag it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from pages_.common import get_activations, get_decoder, get_images, missing, pick_sae, tile_grid
from pathosae.app import TAGS, RunView
from pathosae.app.units import (
    SORTS,
    association_columns,
    similar_units,
    sort_units,
    unit_associations,
    unit_table,
)
from pathosae.schema import ASSOCIATIONS, SLIDE_ID

TOP_TILES = 12
LIST_ROWS = 200


def render(view: RunView) -> None:
    st.header("Units")
    if missing(view, "cohort", "embed", "sae"):
        return
    sae = pick_sae(view)
    acts = get_activations(str(view.root), sae)
    associations = view.table("confounders", ASSOCIATIONS)
    if associations is None:
        missing(view, "confounders")
    table = unit_table(acts.units, associations, view.tags.for_sae(sae))
    unit = unit_picker(view, table, acts.d_sae)
    unit_page(view, sae, acts, associations, unit)


def unit_picker(view: RunView, table: pd.DataFrame, d_sae: int) -> int:
    columns = association_columns(table)
    left, mid, right = st.columns([2, 2, 1])
    search = left.text_input("Search (unit ids or tag)", key="unit_search")
    sort = mid.selectbox("Sort by", SORTS, key="unit_sort")
    column = None
    if sort == "association with a column":
        column = right.selectbox("Column", columns or ["(none)"], key="unit_sort_column")
    hide_dead = right.checkbox("Hide units that never fire", value=True, key="hide_dead")
    ordered = sort_units(table, sort, column, view.label_column, search, hide_dead)
    shown = ["unit", "frequency", "max", "tag", *[f"q_{c}" for c in columns]]
    with st.expander(f"{len(ordered)} units (first {LIST_ROWS} shown)", expanded=False):
        st.dataframe(ordered[shown].head(LIST_ROWS), hide_index=True, key="units_list")
    if "unit" not in st.session_state:
        wanted = st.query_params.get("unit")
        first = int(ordered["unit"].iloc[0]) if len(ordered) else 0
        st.session_state["unit"] = int(wanted) if wanted and wanted.isdigit() and \
            int(wanted) < d_sae else first
    unit = int(st.number_input("Unit", min_value=0, max_value=d_sae - 1, step=1, key="unit"))
    st.query_params["unit"] = str(unit)
    return unit


def unit_page(view: RunView, sae: str, acts, associations, unit: int) -> None:  # noqa: ANN001
    root = str(view.root)
    row = acts.units.iloc[unit]
    st.subheader(f"Unit {unit}")
    cols = st.columns(4)
    cols[0].metric("Firing frequency", f"{row['frequency']:.2%}")
    cols[1].metric("Tiles firing", f"{int(row['n_tiles']):,}")
    cols[2].metric("Mean when firing", f"{row['mean_active']:.3g}")
    cols[3].metric("Max activation", f"{row['max']:.3g}")
    tag_editor(view, sae, unit)
    if row["n_tiles"] == 0:
        st.info(f"Unit {unit} never fires on this run's tiles.")
        return
    index = view.tile_index(sae)
    st.markdown("#### Top-activating tiles")
    rows, values = acts.top_rows(unit, TOP_TILES)
    tile_grid(view, sae, rows, [f"{index.iloc[r]['slide_id']} · {v:.3g}"
                                for r, v in zip(rows, values, strict=True)])
    st.markdown("#### Tiles by activation quantile")
    for low, high, q_rows, q_values in reversed(acts.quantile_rows(unit, n_bins=5, per_bin=6)):
        st.caption(f"activation {low:.3g} – {high:.3g}")
        tile_grid(view, sae, q_rows, [f"{v:.3g}" for v in q_values])
    histogram(acts, unit)
    st.markdown("#### Association with each metadata column")
    if associations is None:
        st.info("Run the confounders stage to see q-values.")
    else:
        st.dataframe(unit_associations(associations, unit), hide_index=True,
                     key="unit_associations")
    slide_heatmap(view, sae, acts, unit, index)
    st.markdown("#### Similar units (decoder cosine)")
    st.dataframe(similar_units(get_decoder(root, sae), unit), hide_index=True, key="similar")


def histogram(acts, unit: int) -> None:  # noqa: ANN001
    counts, edges, zeros = acts.histogram(unit)
    st.markdown("#### Activation histogram")
    st.caption(f"{zeros:,} of {acts.n_rows:,} tiles at zero (not shown)")
    centres = (edges[:-1] + edges[1:]) / 2
    st.bar_chart(pd.DataFrame({"activation": np.round(centres, 3), "tiles": counts}),
                 x="activation", y="tiles")


def slide_heatmap(view: RunView, sae: str, acts, unit: int, index: pd.DataFrame) -> None:  # noqa: ANN001
    st.markdown("#### Heatmap over a slide")
    slides = view.slide_rows(sae)
    rows, _ = acts.unit(unit)
    fired = pd.Series(np.searchsorted(slides["start"].to_numpy(), rows, side="right") - 1)
    ranked = fired.value_counts().index.tolist()
    options = [slides.iloc[i][SLIDE_ID] for i in ranked] + \
        [s for i, s in enumerate(slides[SLIDE_ID]) if i not in set(ranked)]
    slide_id = st.selectbox("Slide (most firing tiles first)", options, key="heat_slide")
    part = slides[slides[SLIDE_ID] == slide_id].iloc[0]
    in_rows, in_values = acts.in_range(unit, int(part["start"]), int(part["stop"]))
    unavailable = view.pixels_unavailable(str(slide_id))
    if unavailable is not None:
        st.caption(f"unit {unit} on {slide_id}: {len(in_rows)} tiles firing; no heatmap "
                   f"({unavailable})")
        return
    coords = index.iloc[in_rows][["x", "y"]].to_numpy()
    image = get_images(str(view.root)).heatmap(slide_id, coords, in_values,
                                               vmax=float(acts.units.iloc[unit]["max"]))
    st.image(image, caption=f"unit {unit} on {slide_id}: {len(in_rows)} tiles firing")


def tag_editor(view: RunView, sae: str, unit: int) -> None:
    current = view.tags.get(sae, unit)
    options = ["untagged", *TAGS]
    with st.form(f"tag_form_{unit}"):
        left, right = st.columns([1, 2])
        choice = left.radio("Tag", options, horizontal=True,
                            index=options.index(current["tag"]) if current else 0)
        note = right.text_input("Note", value=current.get("note", "") if current else "")
        if st.form_submit_button("Save tag"):
            view.tags.set(sae, unit, None if choice == "untagged" else choice, note)
            st.success(f"Saved: unit {unit} is {choice}.")
