"""Shared pieces of the pages: cached run objects, missing-stage notes, tile grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from pathosae.app import RunView
from pathosae.app.images import SlideImages
from pathosae.schema import SLIDE_ID

GRID_COLUMNS = 6


@st.cache_resource(show_spinner=False)
def get_view(root: str) -> RunView:
    return RunView(root)


@st.cache_resource(show_spinner=False)
def get_images(root: str) -> SlideImages:
    return SlideImages(get_view(root))


@st.cache_resource(show_spinner="Preparing unit activations (once per run)...")
def get_activations(root: str, sae: str):  # noqa: ANN201
    return get_view(root).activations(sae)


@st.cache_resource(show_spinner=False)
def get_decoder(root: str, sae: str) -> np.ndarray:
    from pathosae.app.units import unit_normed_decoder

    return unit_normed_decoder(get_view(root).load_sae(sae).W_dec.detach().numpy())


@st.cache_resource(show_spinner="Training the unedited downstream model (once per run)...")
def get_edit_lab(root: str, sae: str):  # noqa: ANN201
    from pathosae.app.edits import EditLab

    return EditLab(get_view(root), sae)


def stage_panel(view: RunView) -> None:
    st.sidebar.subheader("Stages")
    for status in view.statuses():
        mark = "✓" if status.done else "✗"
        st.sidebar.markdown(f"{mark} {status.stage}{'' if status.done else ' (missing)'}")


def missing(view: RunView, *stages: str) -> bool:
    """Show what is missing and the command producing it; True when a stage has not run."""
    absent = [view.status(s) for s in stages if not view.status(s).done]
    for status in absent:
        st.warning(f"**{status.stage}** has not run on this run: `{status.path.name}` "
                   f"({status.what}) is missing. Produce it with:")
        st.code(status.command, language="bash")
    return bool(absent)


def pick_sae(view: RunView) -> str:
    names = view.sae_names()
    default = view.default_sae()
    if len(names) == 1:
        return default
    return st.sidebar.selectbox("SAE", names, index=names.index(default), key="sae")


def tile_grid(
    view: RunView, sae: str, rows: Sequence[int], captions: Sequence[str],
    columns: int = GRID_COLUMNS,
) -> None:
    """Tiles (global feature rows) read from the slides on demand, with captions."""
    if not len(rows):
        st.info("No tiles.")
        return
    index = view.tile_index(sae)
    images = get_images(str(view.root))
    cols = st.columns(columns)
    for i, (row, caption) in enumerate(zip(rows, captions, strict=True)):
        tile = index.iloc[int(row)]
        unavailable = view.pixels_unavailable(str(tile[SLIDE_ID]))
        if unavailable is not None:  # features only: say so instead of an image
            cols[i % columns].caption(f"{caption}: no image ({unavailable})")
            continue
        image = images.tile(str(tile[SLIDE_ID]), int(tile["x"]), int(tile["y"]))
        cols[i % columns].image(image, caption=caption, width="stretch")
