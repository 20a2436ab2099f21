"""pathosae app: first the verdict per confounder (present? where? which fix?), then which SAE
units are tissue phenotypes, which are scanner or site artefacts, and what happens to the model
when one is edited out.

Launch: ``pathosae app RUN`` or ``streamlit run apps/pathosae_app.py -- --run RUN``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pages_ import cohort, common, confounders, edits, saeception, units, verdict

from pathosae.errors import PathosaeError

PAGES = {  # the first is the page a fresh session opens
    "Verdict": verdict.render,
    "Cohort": cohort.render,
    "Units": units.render,
    "Confounders": confounders.render,
    "Edits": edits.render,
    "SAE-ception": saeception.render,
}
RUN_ENV = "PATHOSAE_APP_RUN"


def run_argument() -> str | None:
    """``--run RUN`` after streamlit's ``--``, else the PATHOSAE_APP_RUN environment variable."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.run or os.environ.get(RUN_ENV)


def choose_page() -> str:
    names = list(PAGES)
    if "page" not in st.session_state:
        wanted = st.query_params.get("page")
        st.session_state["page"] = wanted if wanted in names else names[0]
    page = st.sidebar.radio("Page", names, key="page")
    st.query_params["page"] = page
    return page


def main() -> None:
    st.set_page_config(page_title="pathosae", layout="wide")
    root = run_argument()
    if not root:
        st.error("No run directory given. Start the app with `pathosae app RUN` or "
                 "`streamlit run apps/pathosae_app.py -- --run RUN`.")
        return
    try:
        view = common.get_view(root)
    except PathosaeError as exc:
        st.error(str(exc))
        return
    st.sidebar.title("pathosae")
    st.sidebar.caption(f"Run: `{view.root}`")
    page = choose_page()
    common.stage_panel(view)
    try:
        PAGES[page](view)
    except PathosaeError as exc:
        st.error(str(exc))


main()
