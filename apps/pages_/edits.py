"""Edits page: choose units or a direction and an operation, measure it against no edit, see what
changed, and save it as a spec the CLI applies."""

from __future__ import annotations

import streamlit as st

from pages_.common import get_activations, get_edit_lab, missing, pick_sae, tile_grid
from pathosae.app import RunView
from pathosae.app.edits import (
    OPERATIONS,
    EditForm,
    adapter_models,
    adapter_width,
    build_spec,
    direction_choices,
    evaluate_adapter,
    save_spec,
)
from pathosae.schema import EFFECTS

EFFECT_COLUMNS = ("edit", "mode", "auroc_normal", "bacc_normal", "bacc_shifted",
                  "worst_site_bacc_shifted", "per_site_bacc_shifted", "site_leakage", "flip_rate",
                  "collateral_bacc_drop")
MAX_TILES = 18


def render(view: RunView) -> None:
    st.header("Edits")
    if missing(view, "cohort", "embed", "sae"):
        return
    sae = pick_sae(view)
    stage_effects(view)
    adapter_section(view)
    st.subheader("Try an edit")
    acts = get_activations(str(view.root), sae)
    directions = view.directions()
    d_in = int(view.sae_config(sae)["hparams"]["d_in"])
    spec = edit_form(view, acts.d_sae, d_in, directions)
    if spec is None:
        return
    modes = ("applied", "retrained") if st.session_state.get("edit_retrain") else ("applied",)
    lab = get_edit_lab(str(view.root), sae)
    result = lab.evaluate(spec, modes)
    show_result(view, sae, result)
    save_button(view, spec, "save_spec")


def save_button(view: RunView, spec, key: str) -> None:  # noqa: ANN001
    """Save the spec under RUN/edits/ and show the command that applies it."""
    if st.button("Save as spec", key=key):
        path, command = save_spec(view, spec)
        st.success(f"Saved {path}. Apply it with:")
        st.code(command, language="bash")


def unit_ids(text: str, width: int, what: str) -> list[int] | None:
    """Unit ids typed as text; None (with the error shown) when one is out of range."""
    units = [int(t) for t in text.replace(",", " ").split() if t.isdigit()]
    bad = [u for u in units if u >= width]
    if bad:
        st.error(f"unit(s) {bad} do not exist: {what} has units 0..{width - 1}.")
        return None
    return units


def stage_effects(view: RunView) -> None:
    with st.expander("Effect table of the edit stage", expanded=False):
        effects = view.table("edits", EFFECTS)
        if effects is None:
            missing(view, "edit")
        else:
            keep = [c for c in ("kind", *EFFECT_COLUMNS, "missing_reason") if c in effects]
            st.dataframe(effects[keep], hide_index=True, key="stage_effects")


def edit_form(view: RunView, d_sae: int, d_in: int, directions: dict):  # noqa: ANN201
    choices = direction_choices(directions, d_in, d_sae)
    left, right = st.columns(2)
    operation = left.selectbox("Operation", OPERATIONS, key="edit_op")
    units, factor, value, direction = [], 0.0, 0.0, None
    if operation == "project out":
        if not choices:
            missing(view, "confounders")
            st.info("No confounder directions in this run.")
            return None
        direction = right.selectbox("Direction", choices, key="edit_direction")
    else:
        found = unit_ids(right.text_input("Units (ids, comma-separated)", key="edit_units"),
                         d_sae, "the SAE")
        if found is None:
            return None
        units = found
        if operation == "scale":
            factor = st.number_input("Factor", value=0.5, key="edit_factor")
        if operation == "clamp":
            value = st.number_input("Value", value=0.0, key="edit_value")
    name = st.text_input("Name", value="my_edit", key="edit_name")
    st.checkbox("Also retrain the downstream model on edited embeddings (slower)",
                key="edit_retrain")
    if not st.toggle("Evaluate", key="edit_go"):
        return None
    return build_spec(EditForm(name, operation, units, factor, value, direction), d_sae, directions)


def adapter_section(view: RunView) -> None:
    """Edit the adapter layer of an SAE-ception model through its cycle SAE."""
    models = adapter_models(view)
    if not models:
        return
    with st.expander("Edit the adapter layer of an SAE-ception model", expanded=False):
        st.caption("h' = h − D·z + D·z' through the model's cycle SAE (its error kept), then the "
                   "attention-MIL head; measured in the applied mode on the SAE-ception splits.")
        left, middle, right = st.columns(3)
        model = left.selectbox("Model", models, index=len(models) - 1, key="adapter_model")
        operation = middle.selectbox("Operation", [o for o in OPERATIONS if o != "project out"],
                                     key="adapter_op")
        width = adapter_width(view, model)
        units = unit_ids(right.text_input(f"Cycle-SAE units (0..{width - 1})", key="adapter_units"),
                         width, "the cycle SAE")
        if units is None:
            return
        factor = st.number_input("Factor", value=0.5, key="adapter_factor") \
            if operation == "scale" else 0.0
        value = st.number_input("Value", value=0.0, key="adapter_value") \
            if operation == "clamp" else 0.0
        name = st.text_input("Name", value="my_adapter_edit", key="adapter_name")
        if not st.toggle("Evaluate the adapter edit", key="adapter_go") or not units:
            return
        spec = build_spec(EditForm(name, operation, units, factor, value, model=model))
        effects = evaluate_adapter(view, spec)
        keep = [c for c in EFFECT_COLUMNS if c in effects]
        st.dataframe(effects[keep], hide_index=True, key="adapter_effects")
        save_button(view, spec, "adapter_save")


def show_result(view: RunView, sae: str, result) -> None:  # noqa: ANN001
    st.markdown("#### Effect against no edit")
    keep = [c for c in EFFECT_COLUMNS if c in result.effects]
    st.dataframe(result.effects[keep], hide_index=True, key="edit_effects")
    changed = result.slides[result.slides["changed"]]
    st.markdown(f"#### Slides whose prediction changed: {len(changed)} of {len(result.slides)}")
    st.dataframe(result.slides, hide_index=True, key="edit_slides")
    tiles = result.tiles
    st.markdown(f"#### Tiles whose prediction changed: {len(tiles)}")
    st.caption("Each tile scored as a one-tile bag by the unedited model, before and after the edit.")
    if len(tiles):
        shown = tiles.head(MAX_TILES)
        tile_grid(view, sae, shown["row"].tolist(),
                  [f"{r.slide_id}: {r.before} → {r.after}" for r in shown.itertuples()])
