"""Verdict page (the app's first page): per declared confounder, is it present, where does it
live, and which fix restores the shifted test at what cost, against no edit and the baselines."""

from __future__ import annotations

from typing import Any

import streamlit as st

from pages_.common import missing
from pathosae import verdict as verdicts
from pathosae.app import RunView
from pathosae.app.verdict_view import (
    best_baseline,
    best_word,
    edit_link,
    fix_line,
    fixes_table,
    location_line,
    location_word,
    presence_line,
    presence_word,
    random_band_line,
    references,
    summary_table,
    unit_links,
)
from pathosae.errors import PathosaeError
from pathosae.report.figures import forest_png
from pathosae.verdict import Verdict, fix_title


def render(view: RunView) -> None:
    st.header("Verdict")
    if missing(view, "cohort", "embed", "sae", "confounders"):
        return
    missing(view, "edit")  # presence and location still show; the fixes need the edit stage
    try:
        found = verdicts.run_verdicts(view.run)
    except PathosaeError as exc:
        st.info(str(exc))
        return
    if not found:
        st.info("This run declares no confounders: list them as `cohort.confounders` in the "
                "config (e.g. `[site, scanner]`) and rerun from the confounders stage.")
        return
    st.caption(f"Per declared confounder: is it in the embeddings, where does it live, and which "
               f"fix restores {found[0].shifted_test}. Intervals: {found[0].level:.0%} "
               "patient-level bootstrap.")
    st.dataframe(summary_table(found), hide_index=True, key="verdict_summary")
    for verdict in found:
        section(view, verdict)


def section(view: RunView, verdict: Verdict) -> None:
    level = verdict.level
    st.subheader(verdict.confounder)
    present, where, fix = st.columns(3)
    present.metric("Present?", presence_word(verdict.presence))
    present.caption(presence_line(verdict.presence, level))
    if verdict.presence.present is None:
        present.caption(verdict.presence.text)
    where.metric("Where it lives", location_word(verdict))
    where.caption(location_line(verdict))
    where.caption(verdict.location.text)
    fix.metric("Best fix", best_word(verdict))
    if verdict.best is not None:
        fix.caption(f"{fix_title(verdict.best.name)} ({verdict.best.mode}): "
                    f"{fix_line(verdict.best, level)}")
    if verdict.advice:
        st.info(verdict.advice)
    comparison(verdict)
    links(view, verdict)
    st.divider()


def comparison(verdict: Verdict) -> None:
    """The best fix against no edit, the best baseline and random units: table and forest plot."""
    level = verdict.level
    lines = [f"- **no edit** ({ref.mode}): {fix_line(ref, level, reference=True)}"
             for ref in references(verdict)]
    baseline = best_baseline(verdict)
    if baseline is not None:
        lines.append(f"- **best baseline**, {fix_title(baseline.name)} ({baseline.mode}): "
                     f"{fix_line(baseline, level)}")
    lines.append(f"- {random_band_line(verdict)}")
    st.markdown("\n".join(lines))
    figure = forest_png(verdict)
    if figure is not None:  # natural size (one panel per mode), at most the page's width
        st.image(figure, width="content", caption="Every fix on the shifted test with its "
                 "interval; no edit dashed, random units shaded, the best ◆ ★.")
    table = fixes_table(verdict)
    if table.empty:
        st.caption("No edit or baseline has been measured for this confounder.")
        return
    st.dataframe(table, hide_index=True, key=f"verdict_fixes_{verdict.confounder}")


def links(view: RunView, verdict: Verdict) -> None:
    """Buttons that open the confounder's fix on the Edits page and its units on the Units page."""
    edit = edit_link(view, verdict)
    st.button(edit.label, key=f"verdict_edit_{verdict.confounder}", on_click=go_to,
              args=("Edits", edit.state), type="primary")
    units = unit_links(verdict)
    if not units:
        return
    st.caption(f"Open a unit of {verdict.confounder} on the Units page:")
    for column, unit in zip(st.columns(len(units)), units, strict=True):
        column.button(f"Unit {unit}", key=f"verdict_unit_{verdict.confounder}_{unit}",
                      on_click=go_to, args=("Units", {"unit": unit}))


def go_to(page: str, state: dict[str, Any]) -> None:
    """Switch the app to ``page`` with its widgets set (runs before the next script run)."""
    st.session_state["page"] = page
    for key, value in state.items():
        st.session_state[key] = value
