"""The answer to the user's question, per declared confounder: is the cohort confounded by it,
where does it live in the model, and which fix restores generalisation, at what cost.

Read from the run's files only (confounders, edits, SAE-ception tables); the report, the app's
first page and the end-of-run summary all show these same verdicts.

The rules (every comparison on intervals, never on point estimates alone):

- **Presence**: the embedding probe (``representation == "embedding"``, ``scheme ==
  "patient_folds"``, ``subset == "all"``) is present iff its AUROC interval's lower bound lies
  above the permutation chance level's upper quantile (``auroc_low > chance_auroc_high``);
  absent iff it does not; ``None`` (with the reason in the text) when either number is missing.
- **Location**: the units the confounder scan flagged at slide level. With a per-unit
  ``stable`` column, ``units`` when at least one flagged unit is stable, else ``directions``;
  without it, the SAE's seed stability (Hungarian-matched decoder cosine between two seeds):
  below :data:`STABLE_COSINE` the flagged units are not reproducible (``directions``), at or
  above it ``units``; not measured: ``unknown``. Present with nothing flagged: ``directions``.
- **Fixes**: every edit and baseline of the confounder (name ending ``_<confounder>``, plus
  ComBat and stain normalisation), each mode. The random band is the central interval of the
  ``random_units_<confounder>_<draw>`` draws' shifted-test balanced accuracy in the same mode.
  A fix is *better* iff its paired change against no edit has ``delta_bacc_shifted_low > 0``
  and its ``bacc_shifted_low`` lies above the random band's upper end (no draws: the first
  condition alone). Best: the better fix with the highest shifted-test balanced accuracy; when
  none is better, the highest among the fixes whose point estimates clear both references
  (outcome ``too_small``: the advice says the cohort is too small to tell, with the
  shifted-test slides a decision would need, :func:`needed_slides`), else the highest of all
  (outcome ``no_gain``: no fix beats no edit, or random edits do as well).
- **Cost**: no edit's normal-test AUROC (same mode) minus the fix's, and the drop in normal-test
  balanced accuracy.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pathosae.run import RunDir
from pathosae.schema import (
    ASSOCIATIONS,
    CONFOUNDERS_DIR,
    EDITS_DIR,
    EFFECTS,
    HELD_OUT_SITE,
    LEAKAGE,
    SPLIT,
    SUMMARY,
)
from pathosae.uncertainty import random_band, slides_needed

#: Mean matched decoder cosine between two SAE seeds below which units are not reproducible.
STABLE_COSINE = 0.7
NO_EDIT = "no_edit"
#: Baselines that act on every confounder at once (not named after one).
SHARED_BASELINES = ("combat", "stain_normalisation")
MODE_WORDS = {"applied": "applied to the trained model",
              "retrained": "with the model retrained on the edited embeddings"}
_TITLES = {"combat": "ComBat", "stain_normalisation": "stain normalisation", NO_EDIT: "no edit"}
_PREFIXES = (("ablate_flagged_", "ablate the flagged {} units"),
             ("project_out_", "project out the {} direction"),
             ("leace_", "LEACE ({})"))


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval (NaN bounds: no interval available)."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Presence:
    """Is the confounder in the embeddings? Probe AUROC against its permutation chance level."""

    auroc: Interval
    chance_high: float  # the permutation null's upper quantile
    present: bool | None  # None: not measured (too few slides, no probe)
    text: str


@dataclass(frozen=True)
class Location:
    """Where it lives: stable units of the SAE, or directions only."""

    kind: str  # "units", "directions", "unknown"
    n_flagged_units: int
    n_stable_units: int | None  # None: unit stability not measured
    text: str
    units: tuple[int, ...] | None = None  # the flagged units, smallest q first (None: no scan)
    seed_cosine: float | None = None  # the SAE's matched decoder cosine between two seeds


@dataclass(frozen=True)
class Fix:
    """One edit or baseline on the shifted (or leave-one-site-out) test."""

    name: str
    kind: str  # "edit" or "baseline"
    mode: str  # "applied" or "retrained"
    bacc_shifted: Interval
    worst_site_bacc_shifted: Interval
    delta_bacc_shifted: Interval  # paired with no edit, same mode
    auroc_normal_cost: float  # no edit's normal-test AUROC minus this fix's (positive = cost)
    better: bool  # interval clears both no edit and the random-draw band
    bacc_normal_cost: float = math.nan  # drop in normal-test balanced accuracy against no edit
    auroc_normal: Interval | None = None
    missing_reason: str | None = None  # why the fix could not be measured (values then NaN)


@dataclass(frozen=True)
class Verdict:
    confounder: str
    presence: Presence
    location: Location
    no_edit: Fix | None
    best: Fix | None
    random_band: tuple[float, float] | None  # central interval of random-unit draws' bacc_shifted
    fixes: list[Fix] = field(default_factory=list)  # every edit and baseline, for the forest plot
    advice: str = ""  # one or two sentences: what to do
    slides_needed: int | None = None  # when the cohort is too small to tell
    # "fix" (a fix clears both references), "too_small" (none does yet), "no_gain" (none beats
    # no edit even on its point estimate), "no_intervals" (the effect table predates intervals),
    # "not_measured" (no effect table)
    outcome: str = "not_measured"
    no_edit_by_mode: dict[str, Fix] = field(default_factory=dict)
    random_band_by_mode: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_shifted_slides: int | None = None
    shifted_test: str = "the shifted test"
    level: float = 0.95


# ---- reading the run ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RunTables:
    """What the verdicts read from a run (None: the file is not there)."""

    confounders: list[str]
    leakage: pd.DataFrame | None = None
    associations: pd.DataFrame | None = None
    effects: pd.DataFrame | None = None
    seed_cosine: float | None = None
    n_shifted_slides: int | None = None
    shifted_test: str = "the shifted test"
    level: float = 0.95


def run_verdicts(run: RunDir) -> list[Verdict]:
    """One verdict per declared confounder (``cohort.confounders`` of the run's config)."""
    tables = read_tables(run)
    return [verdict_from_tables(v, tables) for v in tables.confounders]


def read_tables(run: RunDir) -> RunTables:
    from pydantic import ValidationError

    from pathosae.config import PathosaeConfig

    state = run.read_state()
    recorded = state.get("config") or {}
    try:
        cfg = PathosaeConfig.model_validate(recorded)
    except ValidationError:  # a run recorded by another version: its confounders, else defaults
        cohort = recorded.get("cohort") or {}
        cfg = PathosaeConfig.model_validate({"cohort": {"confounders": cohort["confounders"]}}) \
            if "confounders" in cohort else PathosaeConfig()
    effects = _parquet(run.root / EDITS_DIR / EFFECTS)
    held_out = _held_out_site(effects)
    n_shifted, shifted_test = _shifted_test(run, cfg.edit.shifted_split, cfg.edit.site_column,
                                            held_out)
    return RunTables(
        confounders=list(cfg.cohort.confounders),
        leakage=_parquet(run.root / CONFOUNDERS_DIR / LEAKAGE),
        associations=_parquet(run.root / CONFOUNDERS_DIR / ASSOCIATIONS),
        effects=effects,
        seed_cosine=_seed_cosine(run),
        n_shifted_slides=n_shifted,
        shifted_test=shifted_test,
        level=float(cfg.uncertainty.level),
    )


def _parquet(path: Any) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _held_out_site(effects: pd.DataFrame | None) -> str | None:
    if effects is None or HELD_OUT_SITE not in effects:
        return None
    named = effects[HELD_OUT_SITE].dropna()
    return str(named.iloc[0]) if len(named) else None


def _shifted_test(
    run: RunDir, shifted_split: str, site_column: str, held_out: str | None
) -> tuple[int | None, str]:
    """How many slides the shifted test holds, and its name in words."""
    from pathosae.downstream.config import LEAVE_ONE_SITE_OUT

    if shifted_split == LEAVE_ONE_SITE_OUT:
        words = f"the held-out site {held_out}" if held_out else "the held-out site"
        words += " (leave-one-site-out test)"
    else:
        words = "the shifted test" if shifted_split == "test" else \
            f"the shifted test (the '{shifted_split}' split)"
    if not run.cohort_path.exists():
        return None, words
    cohort = pd.read_parquet(run.cohort_path)
    if shifted_split == LEAVE_ONE_SITE_OUT:
        n = int((cohort[site_column].astype(str) == str(held_out)).sum()) \
            if held_out and site_column in cohort else 0
    else:
        n = int((cohort[SPLIT] == shifted_split).sum()) if SPLIT in cohort else 0
    return (n or None), words


def _seed_cosine(run: RunDir) -> float | None:
    """The seed-stability control of the SAE the edits used (else the first one measured)."""
    sae_root = run.root / "sae"
    edit_summary = run.root / EDITS_DIR / SUMMARY
    preferred: list[Any] = []
    if edit_summary.exists():
        name = json.loads(edit_summary.read_text()).get("sae")
        if name:
            preferred.append(sae_root / str(name) / "metrics.json")
    candidates = preferred + (sorted(sae_root.glob("*/metrics.json")) if sae_root.exists() else [])
    for path in candidates:
        if not path.exists():
            continue
        stability = (json.loads(path.read_text()).get("controls") or {}).get("seed_stability")
        value = (stability or {}).get("mean_cosine") if isinstance(stability, dict) else None
        if value is not None and math.isfinite(float(value)):
            return float(value)
    return None


# ---- one verdict -------------------------------------------------------------------------------
def verdict_from_tables(confounder: str, tables: RunTables) -> Verdict:
    """The verdict on one confounder from tables in memory (what :func:`run_verdicts` reads)."""
    presence = presence_of(confounder, tables.leakage, tables.level)
    location = location_of(confounder, presence, tables.associations, tables.seed_cosine)
    judged = judge_fixes(confounder, tables.effects, tables.confounders or [confounder],
                         tables.level)
    slides = needed_slides(judged, tables.n_shifted_slides)
    outcome = _outcome(judged)
    verdict = Verdict(
        confounder=confounder, presence=presence, location=location,
        no_edit=judged.no_edit, best=judged.best, random_band=judged.band,
        fixes=judged.fixes, slides_needed=slides if outcome == "too_small" else None,
        outcome=outcome, no_edit_by_mode=judged.no_edit_by_mode,
        random_band_by_mode=judged.bands, n_shifted_slides=tables.n_shifted_slides,
        shifted_test=tables.shifted_test, level=tables.level,
    )
    return _with_advice(verdict)


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def fmt_interval(iv: Interval | None, digits: int = 2, level: float = 0.95,
                 signed: bool = False) -> str:
    """``0.86 (95% CI 0.74–0.95)``; ``n/a`` without a value, ``(no interval)`` without bounds."""
    if iv is None or not _finite(iv.value):
        return "n/a"
    spec = f"{'+' if signed else ''}.{digits}f"
    if not _finite(iv.low, iv.high):
        return f"{format(iv.value, spec)} (no interval)"
    return (f"{format(iv.value, spec)} ({level:.0%} CI {format(iv.low, spec)}–"
            f"{format(iv.high, spec)})")


def _title_case(name: str) -> str:
    return name[:1].upper() + name[1:]


def fix_title(name: str) -> str:
    """A fix's name in words: ``project_out_site`` → ``project out the site direction``."""
    if name in _TITLES:
        return _TITLES[name]
    for prefix, words in _PREFIXES:
        if name.startswith(prefix):
            return words.format(name[len(prefix):])
    match = re.fullmatch(r"random_units_(.+)_(\d+)", name)
    if match:
        return f"random units ({match.group(1)}, draw {match.group(2)})"
    return name.replace("_", " ")


# ---- presence ----------------------------------------------------------------------------------
def _num(row: Any, column: str) -> float:
    """A float cell of a row (Series or dict), NaN when absent or not a number."""
    try:
        value = row.get(column) if hasattr(row, "get") else None
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def presence_of(confounder: str, leakage: pd.DataFrame | None, level: float = 0.95) -> Presence:
    """Present iff the embedding probe's AUROC interval lies above the chance level's upper
    quantile; None with the reason when the probe, its interval or its chance level is missing."""
    name = _title_case(confounder)
    row = _embedding_probe(confounder, leakage)
    if row is None:
        why = ("the confounders stage has not run" if leakage is None
               else "no embedding probe was fitted for it")
        return Presence(Interval(math.nan, math.nan, math.nan), math.nan, None,
                        f"Whether {confounder} is in the embeddings is not known: {why}.")
    auroc = Interval(_num(row, "auroc"), _num(row, "auroc_low"), _num(row, "auroc_high"))
    chance = _num(row, "chance_auroc_high")
    shown = fmt_interval(auroc, level=level)
    if not _finite(auroc.value):
        return Presence(auroc, chance, None, f"Whether {confounder} is in the embeddings is not "
                        "known: the probe could not be fitted (too few slides per level).")
    if not _finite(auroc.low, chance):
        return Presence(auroc, chance, None, (
            f"{name}: probe AUROC {shown}, but this run's probe has no confidence interval or "
            "permutation chance level, so presence cannot be judged (rerun the confounders "
            "stage)."))
    if auroc.low > chance:
        return Presence(auroc, chance, True, f"{name} is present in the embeddings: probe AUROC "
                        f"{shown} against a chance level of ≤{chance:.2f}.")
    return Presence(auroc, chance, False, f"{name} is not detectable in the embeddings beyond "
                    f"chance: probe AUROC {shown} against a chance level of ≤{chance:.2f}.")


def _embedding_probe(confounder: str, leakage: pd.DataFrame | None) -> pd.Series | None:
    if leakage is None or leakage.empty or "variable" not in leakage:
        return None
    rows = leakage[leakage["variable"].astype(str) == confounder]
    for column, wanted in (("representation", "embedding"), ("scheme", "patient_folds"),
                           ("subset", "all")):
        if column in rows:
            rows = rows[rows[column].astype(str) == wanted]
    return rows.iloc[0] if len(rows) else None


# ---- location ----------------------------------------------------------------------------------
def flagged_units(confounder: str, associations: pd.DataFrame | None,
                  alpha: float = 0.05) -> tuple[list[int], list[int] | None]:
    """The units flagged for ``confounder`` at slide level, smallest q first, and those of them
    that hold up: ``finding`` (stable, specific beyond the label, large enough) where the table
    has it and stability was measured, else ``stable`` (None when neither was measured)."""
    if associations is None or associations.empty or "variable" not in associations:
        return [], None
    table = associations[associations["variable"].astype(str) == confounder]
    if "level" in table:
        table = table[table["level"].astype(str) == "slide"]
    if "flagged" in table:
        table = table[table["flagged"].fillna(False).astype(bool)]
    elif "q" in table:
        table = table[table["q"] <= alpha]
    else:
        return [], None
    order = table.sort_values("q", kind="stable") if "q" in table else table
    units = [int(u) for u in dict.fromkeys(order["unit"].tolist())]
    if "stable" not in table or not table["stable"].notna().any():
        return units, None
    column = "finding" if "finding" in table else "stable"
    stable = set(table.loc[table[column].fillna(False).astype(bool), "unit"].astype(int))
    return units, [u for u in units if u in stable]


def location_of(
    confounder: str, presence: Presence, associations: pd.DataFrame | None,
    seed_cosine: float | None,
) -> Location:
    """Stable units, directions only, or unknown (see the module's rules)."""
    if associations is None:
        return Location("unknown", 0, None, f"Where {confounder} lives is not known: the "
                        "confounder scan has not run.", None, seed_cosine)
    units, stable = flagged_units(confounder, associations)
    n = len(units)
    if n == 0:
        if presence.present:
            return Location("directions", 0, None if stable is None else 0, (
                f"No single SAE unit is flagged for {confounder}, yet the probe finds it: it is "
                "spread over directions of the embedding; the direction edits (project out, "
                "LEACE) are the fix to use."), (), seed_cosine)
        return Location("unknown", 0, None if stable is None else 0,
                        f"No SAE unit is flagged for {confounder}.", (), seed_cosine)
    if stable is not None:
        return _location_from_stable(confounder, units, stable, seed_cosine)
    return _location_from_cosine(confounder, units, seed_cosine)


def _units(n: int) -> str:
    return "1 unit is" if n == 1 else f"{n} units are"


def _location_from_stable(confounder: str, units: list[int], stable: list[int],
                          seed_cosine: float | None) -> Location:
    n, k = len(units), len(stable)
    if k:
        return Location("units", n, k, (
            f"{k} of the {n} unit{'' if n == 1 else 's'} flagged for {confounder} "
            f"{'holds' if k == 1 else 'hold'} up (stable across SAE seeds, specific beyond the "
            "label, large enough): it lives in identifiable units, so ablating them is an "
            "option."), tuple(units),
            seed_cosine)
    return Location("directions", n, 0, (
        f"{_units(n)} flagged for {confounder}, but none holds up (stable across SAE seeds, "
        "specific beyond the label, large enough): it is expressed as directions, not units; "
        "the direction edits (project out, LEACE) are the fix to use."), tuple(units),
        seed_cosine)


def _location_from_cosine(confounder: str, units: list[int],
                          seed_cosine: float | None) -> Location:
    n = len(units)
    if seed_cosine is None:
        return Location("unknown", n, None, (
            f"{_units(n)} flagged for {confounder}; whether the SAE's units are reproducible "
            "across seeds was not measured (enable sae.controls.seed_stability)."), tuple(units), None)
    if seed_cosine < STABLE_COSINE:
        return Location("directions", n, None, (
            f"{_units(n)} flagged for {confounder}, but this SAE's units are not reproducible "
            f"across training seeds (matched decoder cosine {seed_cosine:.2f}, below "
            f"{STABLE_COSINE}): {confounder} is expressed as directions, not units; the "
            "direction edits (project out, LEACE) are the fix to use."), tuple(units),
            seed_cosine)
    return Location("units", n, None, (
        f"{_units(n)} flagged for {confounder} and this SAE's units are reproducible across "
        f"seeds (matched decoder cosine {seed_cosine:.2f}): it lives in identifiable units."),
        tuple(units), seed_cosine)


# ---- fixes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgedFixes:
    fixes: list[Fix]
    no_edit_by_mode: dict[str, Fix]
    bands: dict[str, tuple[float, float]]
    best: Fix | None
    has_intervals: bool

    @property
    def no_edit(self) -> Fix | None:
        mode = self.best.mode if self.best is not None else None
        if mode in self.no_edit_by_mode:
            return self.no_edit_by_mode[mode]
        return next(iter(self.no_edit_by_mode.values()), None)

    @property
    def band(self) -> tuple[float, float] | None:
        mode = self.best.mode if self.best is not None else next(iter(self.bands), None)
        return self.bands.get(mode) if mode is not None else None


def owner(name: str, confounders: list[str]) -> str | None:
    """The declared confounder an edit is named after (the longest ``_<confounder>`` suffix)."""
    match = [c for c in confounders if name.endswith(f"_{c}")]
    return max(match, key=len) if match else None


def _random_owner(name: str, confounders: list[str]) -> str | None:
    match = re.fullmatch(r"random_units_(.+)_\d+", name)
    return match.group(1) if match and match.group(1) in confounders else None


def judge_fixes(confounder: str, effects: pd.DataFrame | None, confounders: list[str],
                level: float = 0.95) -> JudgedFixes:
    """Every fix of ``confounder`` judged against no edit and the random band (same mode)."""
    if effects is None or effects.empty or not {"edit", "bacc_shifted"} <= set(effects.columns):
        return JudgedFixes([], {}, {}, None, has_intervals=False)
    table = effects.assign(mode=effects.get("mode", "applied"))
    refs = {str(r["mode"]): _fix(r, None, None, reference=True) for _, r in table.iterrows()
            if r["edit"] == NO_EDIT}
    bands: dict[str, tuple[float, float]] = {}
    for mode, rows in table.groupby("mode", sort=False):
        draws = rows[[_random_owner(str(e), confounders) == confounder for e in rows["edit"]]]
        low, high = random_band(draws["bacc_shifted"].astype(float).to_numpy(), level)
        if _finite(low, high):
            bands[str(mode)] = (low, high)
    fixes = [
        _fix(r, refs.get(str(r["mode"])), bands.get(str(r["mode"])))
        for _, r in table.iterrows() if _is_fix(r, confounder, confounders)
    ]
    has_intervals = any(_finite(f.bacc_shifted.low, f.delta_bacc_shifted.low) for f in fixes)
    return JudgedFixes(fixes, refs, bands, _best(fixes, bands), has_intervals)


def _is_fix(row: pd.Series, confounder: str, confounders: list[str]) -> bool:
    name = str(row["edit"])
    if name == NO_EDIT or str(row.get("kind", "")) == "random" or name.startswith("random_units_"):
        return False
    return name in SHARED_BASELINES or owner(name, confounders) == confounder


def _fix(row: pd.Series, ref: Fix | None, band: tuple[float, float] | None,
         reference: bool = False) -> Fix:
    """A fix judged against its mode's no edit ``ref`` (None: no reference in that mode, so
    its change and cost are NaN) and random band; ``reference``: the no-edit row itself."""
    def iv(column: str) -> Interval:
        return Interval(_num(row, column), _num(row, f"{column}_low"), _num(row, f"{column}_high"))

    bacc, auroc = iv("bacc_shifted"), iv("auroc_normal")
    zero = 0.0 if reference else math.nan
    ref_bacc = ref.bacc_shifted.value if ref is not None else zero
    ref_auroc = ref.auroc_normal.value if ref is not None and ref.auroc_normal else math.nan
    delta = Interval(bacc.value - ref_bacc if ref is not None else zero,
                     _num(row, "delta_bacc_shifted_low"), _num(row, "delta_bacc_shifted_high"))
    bacc_cost = _num(row, "collateral_bacc_drop") if ref is not None else zero
    reason = row.get("missing_reason")
    better = ref is not None and _finite(delta.low, bacc.low) and delta.low > 0 and (
        band is None or bacc.low > band[1])
    return Fix(
        name=str(row["edit"]), kind="edit" if str(row.get("kind", "")) == "edit" else "baseline",
        mode=str(row["mode"]), bacc_shifted=bacc, worst_site_bacc_shifted=iv(
            "worst_site_bacc_shifted"), delta_bacc_shifted=delta,
        auroc_normal_cost=ref_auroc - auroc.value if ref is not None else zero,
        better=bool(better), bacc_normal_cost=bacc_cost,
        auroc_normal=auroc, missing_reason=str(reason) if isinstance(reason, str) and reason
        else None,
    )


def clears_on_point(fix: Fix, band: tuple[float, float] | None) -> bool:
    """The point estimates alone clear no edit and the random band (the intervals may not)."""
    return fix.delta_bacc_shifted.value > 0 and (band is None or fix.bacc_shifted.value > band[1])


def _best(fixes: list[Fix], bands: dict[str, tuple[float, float]]) -> Fix | None:
    """The better fix with the highest shifted-test balanced accuracy; without one, the highest
    among the fixes whose point estimates clear both references, else among all measured
    fixes (ties: the first in the table)."""
    measured = [f for f in fixes if f.missing_reason is None and _finite(f.bacc_shifted.value)]
    pool = ([f for f in measured if f.better]
            or [f for f in measured if clears_on_point(f, bands.get(f.mode))] or measured)
    if not pool:
        return None
    top = max(f.bacc_shifted.value for f in pool)
    return next(f for f in pool if f.bacc_shifted.value == top)


def needed_slides(judged: JudgedFixes, n_slides: int | None) -> int | None:
    """Shifted-test slides for the best fix's lower half-widths (against no edit, and against
    the random band) to shrink below its observed margins over them, by the 1/√n rule; None
    when a margin is not positive, a width is missing or the test's size is unknown."""
    best, ref, band = judged.best, judged.no_edit, judged.band
    if best is None or ref is None or not n_slides:
        return None
    margins = [(best.delta_bacc_shifted.value,
                best.delta_bacc_shifted.value - best.delta_bacc_shifted.low)]
    if band is not None:
        margins.append((best.bacc_shifted.value - band[1],
                        best.bacc_shifted.value - best.bacc_shifted.low))
    needs = [slides_needed(width, n_slides, margin) for margin, width in margins]
    if any(v is None for v in needs):
        return None
    return max(int(v) for v in needs if v is not None)


def _outcome(judged: JudgedFixes) -> str:
    best = judged.best
    if best is None:
        return "not_measured"
    if best.better:
        return "fix"
    if not judged.has_intervals:
        return "no_intervals"
    return "too_small" if clears_on_point(best, judged.band) else "no_gain"


# ---- advice ------------------------------------------------------------------------------------
def _with_advice(verdict: Verdict) -> Verdict:
    from dataclasses import replace

    return replace(verdict, advice=advice_for(verdict))


def advice_for(verdict: Verdict) -> str:
    """One or two plain sentences: what to do about this confounder."""
    name, best, level = verdict.confounder, verdict.best, verdict.level
    present = verdict.presence.present
    lead = {True: f"{_title_case(name)} is in the embeddings.",
            False: f"{_title_case(name)} is not detectable in the embeddings beyond chance.",
            None: f"Whether {name} is in the embeddings is not known."}[present]
    if verdict.outcome == "not_measured" or best is None:
        return f"{lead} No fix has been measured yet (run the edit stage)."
    ref = verdict.no_edit
    before = f"{ref.bacc_shifted.value:.2f}" if ref is not None else "n/a"
    title = f"{fix_title(best.name)} ({MODE_WORDS.get(best.mode, best.mode)})"
    if verdict.outcome == "fix":
        cost = _cost_words(best)
        return (f"{lead} Recommended fix: {title}; it raises balanced accuracy on "
                f"{verdict.shifted_test} from "
                f"{before} to {fmt_interval(best.bacc_shifted, level=level)}, more than random "
                f"edits of the same size, {cost}.")
    if verdict.outcome == "no_intervals":
        return (f"{lead} This run's effect table has no confidence intervals, so no fix can be "
                "judged; rerun the edit stage to get them.")
    if verdict.outcome == "no_gain":
        return _no_gain_advice(verdict, lead, before)
    more = (f"about {verdict.slides_needed} shifted-test slides (now {verdict.n_shifted_slides}) "
            "would be needed to tell" if verdict.slides_needed is not None
            else "more shifted-test slides are needed to tell")
    return (f"{lead} The cohort is too small to tell whether any fix helps: the best, {title}, "
            f"reaches {fmt_interval(best.bacc_shifted, level=level)} against {before} without "
            f"an edit, but its interval does not clear both no edit and random edits; {more}.")


def _no_gain_advice(verdict: Verdict, lead: str, before: str) -> str:
    best = verdict.best
    if best is None:
        return lead
    tail = ("nothing needs to be done about it in this cohort" if verdict.presence.present is False
            else "none is recommended on this evidence")
    band = verdict.random_band
    if best.delta_bacc_shifted.value > 0 and band is not None:
        return (f"{lead} No fix did better than random edits of the same size: the best "
                f"candidate, {fix_title(best.name)} ({best.mode}), reaches "
                f"{best.bacc_shifted.value:.2f} on {verdict.shifted_test} against {before} "
                f"without an edit, but random edits reach up to {band[1]:.2f}; {tail}.")
    return (f"{lead} No fix did better than leaving the model as it is: on "
            f"{verdict.shifted_test} the unedited model reaches {before} and the best "
            f"candidate, {fix_title(best.name)}, {best.bacc_shifted.value:.2f}; {tail}.")


def _cost_words(fix: Fix) -> str:
    if not _finite(fix.auroc_normal_cost):
        return "at an unmeasured cost on the normal test"
    if fix.auroc_normal_cost <= 0.005:
        return "at no loss of normal-test AUROC"
    return f"at a cost of {fix.auroc_normal_cost:.2f} normal-test AUROC"


__all__ = [
    "Fix", "Interval", "Location", "Presence", "RunTables", "Verdict", "advice_for", "fix_title",
    "flagged_units", "fmt_interval", "judge_fixes", "location_of", "needed_slides",
    "presence_of", "read_tables", "run_verdicts", "verdict_from_tables",
]
