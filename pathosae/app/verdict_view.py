"""How the app's Verdict page shows :mod:`pathosae.verdict`: the verdict's numbers as text, its
fixes as a table, and what the page's links to the Units and Edits pages open.

Free of Streamlit (the page in ``apps/pages_/verdict.py`` only lays these out); the forest plot
is the report's (:func:`pathosae.report.figures.forest_png`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from pathosae.verdict import NO_EDIT, Fix, Presence, Verdict, fix_title, fmt_interval

if TYPE_CHECKING:
    from pathosae.app.runview import RunView

MAX_UNIT_LINKS = 8
LOCATION_WORDS = {"units": "stable SAE units", "directions": "directions only",
                  "unknown": "not known"}
# The "Best fix" headline when no fix clears both no edit and the random band.
OUTCOME_WORDS = {"too_small": "too few slides to tell", "no_gain": "none beats no edit",
                 "no_intervals": "no intervals", "not_measured": "not measured yet"}


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def presence_word(presence: Presence) -> str:
    """The headline answer: present, not detected, or not measured."""
    if presence.present is None:
        return "not measured"
    return "present" if presence.present else "not detected"


def presence_line(presence: Presence, level: float = 0.95) -> str:
    """Probe AUROC with its interval against the permutation chance level."""
    chance = (f"chance level up to {presence.chance_high:.2f} (permutation null)"
              if _finite(presence.chance_high) else "no permutation chance level")
    return f"probe AUROC {fmt_interval(presence.auroc, level=level)}; {chance}"


def location_word(verdict: Verdict) -> str:
    return LOCATION_WORDS.get(verdict.location.kind, verdict.location.kind)


def location_line(verdict: Verdict) -> str:
    loc = verdict.location
    stable = "stability not measured" if loc.n_stable_units is None else \
        f"{loc.n_stable_units} stable across SAE seeds"
    cosine = f"; seed cosine {loc.seed_cosine:.2f}" if _finite(loc.seed_cosine) else ""
    return f"{loc.n_flagged_units} flagged units, {stable}{cosine}"


def best_word(verdict: Verdict) -> str:
    """The "Best fix" headline: the fix's name in words when one clears both references."""
    if verdict.best is not None and verdict.outcome == "fix":
        return fix_title(verdict.best.name)
    return OUTCOME_WORDS.get(verdict.outcome, verdict.outcome.replace("_", " "))


def fix_line(fix: Fix, level: float = 0.95, reference: bool = False) -> str:
    """One fix in words: shifted-test accuracy, the paired change against no edit, its cost."""
    if fix.missing_reason:
        return f"not measured: {fix.missing_reason}"
    line = f"balanced accuracy {fmt_interval(fix.bacc_shifted, level=level)}"
    if reference:
        return line
    cost = (f"normal-test AUROC cost {fix.auroc_normal_cost:+.3f}"
            if _finite(fix.auroc_normal_cost) else "normal-test cost not measured")
    return (f"{line}; change against no edit "
            f"{fmt_interval(fix.delta_bacc_shifted, level=level, signed=True)}; {cost}")


def references(verdict: Verdict) -> list[Fix]:
    """No edit, once per mode."""
    refs = list(verdict.no_edit_by_mode.values())
    if not refs and verdict.no_edit is not None:
        refs = [verdict.no_edit]
    return refs


def best_baseline(verdict: Verdict) -> Fix | None:
    """The baseline with the highest balanced accuracy on the shifted test."""
    baselines = [f for f in verdict.fixes if f.kind == "baseline" and _finite(f.bacc_shifted.value)]
    return max(baselines, key=lambda f: f.bacc_shifted.value, default=None)


def random_band_line(verdict: Verdict) -> str:
    """The random-unit draws' band of shifted-test balanced accuracy, per mode when several."""
    bands = verdict.random_band_by_mode or (
        {verdict.best.mode if verdict.best else "": verdict.random_band}
        if verdict.random_band is not None else {})
    if not bands:
        return "no random-unit draws for this confounder"
    shown = "; ".join(f"{f'({mode}) ' if len(bands) > 1 else ''}{low:.2f}–{high:.2f}"
                      for mode, (low, high) in bands.items())
    return f"random units of the same size: balanced accuracy {shown}"


def fixes_table(verdict: Verdict) -> pd.DataFrame:
    """No edit and every fix, shifted-test numbers as text, best balanced accuracy first."""
    level = verdict.level
    fixes = [*references(verdict), *verdict.fixes]
    modes = len({f.mode for f in fixes})
    rows = [{
        "fix": fix_title(f.name),
        "edit": f.name,
        "kind": "reference" if f.name == NO_EDIT else f.kind,
        "mode": f.mode,
        "shifted balanced accuracy": fmt_interval(f.bacc_shifted, level=level),
        "change against no edit": "" if f.name == NO_EDIT else
        fmt_interval(f.delta_bacc_shifted, level=level, signed=True),
        "worst site": fmt_interval(f.worst_site_bacc_shifted, level=level),
        "AUROC cost (normal test)": "" if f.name == NO_EDIT else _signed(f.auroc_normal_cost),
        "balanced-accuracy cost (normal test)": "" if f.name == NO_EDIT else
        _signed(f.bacc_normal_cost),
        "clears no edit and random": "" if f.name == NO_EDIT else ("yes" if f.better else "no"),
        "not measured": f.missing_reason or "",
        "_order": f.bacc_shifted.value if _finite(f.bacc_shifted.value) else -math.inf,
    } for f in fixes]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if modes == 1:
        table = table.drop(columns="mode")
    if not table["not measured"].astype(bool).any():
        table = table.drop(columns="not measured")
    return table.sort_values("_order", ascending=False, kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def _signed(value: float) -> str:
    return f"{value:+.3f}" if _finite(value) else "n/a"


def summary_table(verdicts: list[Verdict]) -> pd.DataFrame:
    """One row per confounder: present, where it lives, the best fix against no edit."""
    return pd.DataFrame([{
        "confounder": v.confounder,
        "present": presence_word(v.presence),
        "probe AUROC (chance)": fmt_interval(v.presence.auroc, level=v.level) + (
            f", chance ≤{v.presence.chance_high:.2f}" if _finite(v.presence.chance_high) else ""),
        "where": location_word(v),
        "best fix": best_word(v),
        "its shifted bal. acc.": fmt_interval(v.best.bacc_shifted, level=v.level)
        if v.best is not None else "n/a",
        "no edit": fmt_interval(v.no_edit.bacc_shifted, level=v.level)
        if v.no_edit is not None else "n/a",
    } for v in verdicts])


def unit_links(verdict: Verdict) -> list[int]:
    """The units the confounder was flagged in (smallest q first), for the Units page."""
    return [int(u) for u in (verdict.location.units or ())][:MAX_UNIT_LINKS]


@dataclass(frozen=True)
class EditLink:
    """What the Edits page opens with: a label for the link and its form's values."""

    label: str
    state: dict[str, Any] = field(default_factory=dict)


def edit_link(view: RunView, verdict: Verdict) -> EditLink:
    """The best fix as an edit to try on the Edits page (its saved spec when that ablates units
    or projects out a named direction), else the confounder's units or its mean-difference
    direction; the Edits page opens with its form filled in (not yet evaluated)."""
    from pathosae.edit.spec import Ablate, ProjectOut

    directions = view.directions()
    best = verdict.best
    if best is not None:
        retrain = {"edit_retrain": True} if best.mode == "retrained" else {}
        for op in _spec_ops(view, best.name):
            if isinstance(op, Ablate):
                return EditLink(f"Try “{fix_title(best.name)}” on the Edits page",
                                {**_ablate_state(op.units), **retrain})
            if isinstance(op, ProjectOut) and op.name in directions:
                return EditLink(f"Try “{fix_title(best.name)}” on the Edits page",
                                {**_project_state(str(op.name)), **retrain})
    units = list(verdict.location.units or ())
    if units and verdict.location.kind == "units":
        return EditLink(f"Ablate the {verdict.confounder} units on the Edits page",
                        _ablate_state(units))
    direction = f"{verdict.confounder}.mean_difference"
    if direction in directions:
        return EditLink(f"Project out the {verdict.confounder} direction on the Edits page",
                        _project_state(direction))
    return EditLink("Open the Edits page")


def _spec_ops(view: RunView, name: str) -> list[Any]:
    """The operations of the saved embedding-layer spec ``edits/<name>.json`` ([] when there is
    none or it does not read)."""
    from pathosae.edit.spec import EditSpec
    from pathosae.errors import PathosaeError
    from pathosae.schema import EDITS_DIR

    path = view.file(EDITS_DIR, f"{name}.json")
    if path is None:
        return []
    try:
        spec = EditSpec.from_file(path)
    except PathosaeError:
        return []
    return list(spec.ops) if spec.layer == "embedding" else []


def _ablate_state(units: list[int]) -> dict[str, Any]:
    return {"edit_op": "ablate", "edit_units": ", ".join(str(int(u)) for u in units)}


def _project_state(direction: str) -> dict[str, Any]:
    return {"edit_op": "project out", "edit_direction": direction}
