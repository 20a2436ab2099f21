"""Assemble RUN/report.html from the files the stages wrote.

The page answers the user's question first and shows the evidence after it:

1. the verdict: a glance table (one row per declared confounder), then one panel per
   confounder (present? where? best fix with its intervals and cost, the baselines, the
   advice) with its forest plot of every edit and baseline;
2. the evidence, figures before tables, one section per stage: cohort, SAE, confounders,
   edits, SAE-ception; then the run's stages, durations and versions;
3. the appendix (:data:`APPENDIX`): every raw table, collapsed, with readable column names, and
   the settings hashes (nowhere above it).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd

from pathosae.io import write_text_atomic
from pathosae.report.html import (
    STYLE,
    details,
    esc,
    how,
    image_file,
    missing,
    png_bytes,
    readable,
    table,
)
from pathosae.run import RunDir
from pathosae.schema import (
    ADAPTER_EDITS,
    ASSOCIATIONS,
    CONFOUNDERS_DIR,
    CONTROLS,
    EDITS_DIR,
    EFFECTS,
    LEAKAGE,
    PATHOROB,
    REPORT_HTML,
    ROBUSTNESS,
    SAECEPTION_DIR,
    SAECEPTION_METRICS,
    SETTINGS_HASH,
    SLIDE_AVAILABLE,
    SLIDE_ID,
    SPLIT,
    SUMMARY,
)
from pathosae.verdict import (
    MODE_WORDS,
    Fix,
    Verdict,
    fix_title,
    fmt_interval,
    run_verdicts,
)

#: The heading that opens the appendix; settings hashes appear only after it.
APPENDIX = "<h2 id='appendix'>Appendix: raw tables</h2>"
VERDICT_HEADING = "<h2 id='verdict'>Verdict: what to do about each confounder</h2>"
RUN_HEADING = "<h2 id='run'>About this run</h2>"


def build_report(run: RunDir) -> Path:
    state = run.read_state()
    verdicts = run_verdicts(run) if run.run_json.exists() else []
    level = verdicts[0].level if verdicts else 0.95
    sections = [
        _title(run),
        _verdict_section(verdicts),
        _cohort(run),
        _sae(run),
        _confounders(run, level),
        _edits(run, verdicts, level),
        _saeception(run, level),
        _run_details(state),
        _appendix(run, level),
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>pathosae report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
    target = run.root / REPORT_HTML
    write_text_atomic(target, page)
    return target


def _title(run: RunDir) -> str:
    return (f"<h1>pathosae run: {esc(run.root.name)}</h1>"
            f"<p class='how'>Run directory <code>{esc(run.root)}</code>. The verdict comes first; "
            "the evidence behind it follows, figures before tables; raw tables are in the "
            "appendix.</p>")


# ---- 1. the verdict ----------------------------------------------------------------------------
def _verdict_section(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return (VERDICT_HEADING + "<p class='pending'>No confounder is declared "
                "(<code>cohort.confounders</code> in the config), so there is nothing to judge."
                "</p>")
    return (VERDICT_HEADING + _glance(verdicts)
            + how("Present: the probe's confidence interval lies above its permutation chance "
                  "level. A fix counts only when its interval clears both the unedited model and "
                  "random edits of the same size.")
            + "".join(_panel(v) for v in verdicts))


def _glance(verdicts: list[Verdict]) -> str:
    rows = [{
        "confounder": v.confounder,
        "in the embeddings?": _presence_word(v),
        "where it lives": {"units": "identifiable SAE units", "directions": "directions, not "
                           "units"}.get(v.location.kind, "not located"),
        "best fix or candidate (shifted-test balanced accuracy)": _best_words(v),
        "what to do": v.advice,
    } for v in verdicts]
    return "<div class='glance'>" + table(pd.DataFrame(rows)) + "</div>"


def _presence_word(v: Verdict) -> str:
    word = {True: "yes", False: "no", None: "not measured"}[v.presence.present]
    if v.presence.present is None:
        return word
    return f"{word}: AUROC {fmt_interval(v.presence.auroc, level=v.level)}, chance ≤" \
           f"{v.presence.chance_high:.2f}"


def _best_words(v: Verdict) -> str:
    best = v.best
    if best is None:
        return "not measured"
    tag = {"fix": "clears no edit and random edits", "too_small": "too small to tell",
           "no_gain": "no gain", "no_intervals": "no intervals"}.get(v.outcome, v.outcome)
    return (f"{fix_title(best.name)} ({best.mode}): "
            f"{fmt_interval(best.bacc_shifted, level=v.level)}; {tag}")


def _panel(v: Verdict) -> str:
    items = [f"<li><b>Present?</b> {esc(v.presence.text)}</li>",
             f"<li><b>Where does it live?</b> {esc(v.location.text)}</li>"]
    if v.best is not None:
        label = "Best fix" if v.outcome == "fix" else "Best candidate (not a proven fix)"
        items.append(f"<li><b>{label}</b>: {_fix_words(v, v.best)}</li>")
        items.append(f"<li><b>Against the baselines</b> ({esc(v.best.mode)} mode): "
                     f"{_baselines_words(v)}</li>")
    forest = _forest(v)
    return (f"<div class='verdict'><h3>{esc(v.confounder)}</h3>"
            f"<p class='advice'>{esc(v.advice)}</p><ul>{''.join(items)}</ul>{forest}</div>")


def _fix_words(v: Verdict, fix: Fix) -> str:
    ref = v.no_edit_by_mode.get(fix.mode)
    band = v.random_band_by_mode.get(fix.mode)
    parts = [
        f"<b>{esc(fix_title(fix.name))}</b> ({esc(MODE_WORDS.get(fix.mode, fix.mode))}): "
        f"balanced accuracy on {esc(v.shifted_test)} "
        f"{esc(fmt_interval(fix.bacc_shifted, level=v.level))}, worst site "
        f"{esc(fmt_interval(fix.worst_site_bacc_shifted, level=v.level))}",
    ]
    if ref is not None:
        parts.append(f"without an edit {esc(fmt_interval(ref.bacc_shifted, level=v.level))}, "
                     f"worst site {esc(fmt_interval(ref.worst_site_bacc_shifted, level=v.level))}"
                     "; paired change "
                     f"{esc(fmt_interval(fix.delta_bacc_shifted, level=v.level, signed=True))}")
    parts.append(f"random edits of the same size {band[0]:.2f}–{band[1]:.2f}" if band
                 else "no random-unit draws to compare with")
    parts.append("cost on the normal test: " + _cost(fix))
    if v.slides_needed is not None:
        parts.append(f"about {v.slides_needed} shifted-test slides would tell (now "
                     f"{v.n_shifted_slides})")
    return "; ".join(parts) + "."


def _cost(fix: Fix) -> str:
    def signed(x: float) -> str:
        return f"{x + 0.0:+.3f}" if math.isfinite(x) else "n/a"  # + 0.0: no "-0.000"

    return (f"AUROC {signed(-fix.auroc_normal_cost)}, balanced accuracy "
            f"{signed(-fix.bacc_normal_cost)} against no edit")


def _baselines_words(v: Verdict) -> str:
    mode = v.best.mode if v.best is not None else "applied"
    shown = [f for f in v.fixes if f.kind == "baseline" and f.mode == mode]
    if not shown:
        return "none measured"
    words = []
    for fix in shown:
        value = (f"not measured ({fix.missing_reason})" if fix.missing_reason
                 else fmt_interval(fix.bacc_shifted, level=v.level)
                 + (" — clears both references" if fix.better else ""))
        words.append(f"{esc(fix_title(fix.name))} {esc(value)}")
    return "; ".join(words)


def _forest(v: Verdict) -> str:
    from pathosae.report.figures import forest_png

    data = forest_png(v)
    if data is None:
        return ""
    return (f"<figure>{png_bytes(data, f'forest plot of the fixes for {v.confounder}')}"
            "<figcaption class='how'>Each row is an edit or baseline: the dot is its balanced "
            "accuracy on the shifted test, the bar its confidence interval. The dashed line is "
            "the unedited model, the grey band the spread of random edits of the same size. "
            "Green: the interval clears both; ★ the best fix (◆ in the panel of its mode)."
            "</figcaption></figure>")


# ---- 2. the evidence ---------------------------------------------------------------------------
def _cohort(run: RunDir) -> str:
    out = ["<h2>Cohort and tissue detection</h2>"]
    if not run.cohort_path.exists():
        return out[0] + missing("cohort", f"pathosae run --out {run.root} --stages cohort")
    cohort = pd.read_parquet(run.cohort_path)
    cfg = json.loads(json.dumps(run.read_state().get("config", {})))
    label = (cfg.get("cohort") or {}).get("label") or "label"
    confounders = (cfg.get("cohort") or {}).get("confounders") or []
    out.append(f"<p>{len(cohort)} slides from {cohort['patient_id'].nunique()} patients.</p>")
    for column in confounders:
        if label in cohort and column in cohort:
            cross = pd.crosstab([cohort[SPLIT], cohort[label]], cohort[column])
            cross = cross.reset_index()
            cross.columns.name = None
            out.append(f"<h3>{esc(label)} × {esc(column)} by split</h3>" + table(cross))
            out.append(how(f"Rows are split and {label}, columns {column}: a confounded training "
                           f"split has its {label} values concentrated in a few {column} columns."))
    if SLIDE_AVAILABLE in cohort and not cohort[SLIDE_AVAILABLE].any():
        out.append("<h3>Tissue detection (QC)</h3><p>The slides are not available in this run "
                   "(a features-only cohort: its features were imported with <code>pathosae "
                   "import-features</code>), so there are no QC images. Add a path column to "
                   "the manifest to tile the slides.</p>")
        return "".join(out)
    out.append(_qc_grid(run, list(cohort[SLIDE_ID])))
    return "".join(out)


def _qc_grid(run: RunDir, slide_ids: list[str], limit: int = 12) -> str:
    figures = []
    for slide_id in slide_ids[:limit]:
        path = run.qc_dir / f"{slide_id}.png"
        if path.exists():
            figures.append(f"<figure>{image_file(path, 240)}<figcaption>{esc(slide_id)}"
                           "</figcaption></figure>")
    if not figures:
        return missing("tile", f"pathosae run --out {run.root} --stages tile")
    return ("<h3>Tissue detection (QC)</h3>"
            + details(f"{len(figures)} QC thumbnails", "<div class='grid'>" + "".join(figures)
                      + "</div>")
            + how("Each thumbnail shows the detected tissue and the kept tile grid; tiles on "
                  "glass or pen marks mean the tissue thresholds need adjusting."))


def _sae(run: RunDir) -> str:
    out = ["<h2>Sparse autoencoders</h2>"]
    sae_root = run.root / "sae"
    metrics = sorted(sae_root.glob("*/metrics.json")) if sae_root.exists() else []
    if not metrics:
        return out[0] + missing("sae", f"pathosae sae --run {run.root}")
    for path in metrics:
        info = json.loads(path.read_text())
        out.append(f"<h3>{esc(path.parent.name)}: {esc(info.get('architecture', ''))}, "
                   f"{info.get('d_in')} → {info.get('d_sae')} latents</h3>")
        stability = (info.get("controls") or {}).get("seed_stability") or {}
        if "mean_cosine" in stability:
            out.append(f"<p>Seed stability: decoder atoms of two seeds matched by the Hungarian "
                       f"method have mean cosine {stability['mean_cosine']:.2f}; "
                       f"{100 * stability.get('fraction_above_0.9', 0):.0f}% of atoms above 0.9. "
                       "Below 0.7 single units are not reproducible, and a confounder is better "
                       "described by directions than by units.</p>")
        out.append(table(_sae_quality(info)))
        out.append(how("Held-out FVU is the variance the SAE fails to explain on held-out slides "
                       "(lower is better). The same SAE trained on permuted features (structure "
                       "destroyed) or on a random-weights encoder shows what pareidolia scores; "
                       "a real SAE should beat them clearly."))
        coverage = _coverage_table(info)
        if not coverage.empty:
            out.append(table(coverage, max_rows=40))
            out.append(how("Concept coverage: for each ground-truth phenotype and metadata value, "
                           "the best single unit's AUROC, and how many units pass 0.9; the null "
                           "column is the same with the labels shuffled."))
    return "".join(out)


def _sae_quality(info: dict) -> pd.DataFrame:
    rows = [{"model": "SAE", **_quality(info.get("held_out") or {})}]
    controls = info.get("controls") or {}
    for name, entry in (controls.get("permuted") or {}).items():
        if isinstance(entry, dict) and "held_out" in entry:
            rows.append({"model": f"permuted features ({name} slides)",
                         **_quality(entry["held_out"])})
    random_encoder = controls.get("random_encoder") or {}
    if "held_out" in random_encoder:
        rows.append({"model": "random-weights encoder", **_quality(random_encoder["held_out"])})
    elif random_encoder.get("reason"):
        rows.append({"model": f"random-weights encoder: {random_encoder['reason']}"})
    return pd.DataFrame(rows)


def _quality(held: dict) -> dict[str, object]:
    return {"held-out FVU": held.get("fvu"), "L0": held.get("l0"),
            "dead %": 100 * held["dead_fraction"] if "dead_fraction" in held else None,
            "dense %": 100 * held["dense_fraction"] if "dense_fraction" in held else None,
            "cosine": held.get("cosine")}


def _coverage_table(info: dict) -> pd.DataFrame:
    rows = []
    for concept, entry in (info.get("concept_coverage") or {}).items():
        rows.append({"concept": concept, "best unit": entry.get("best_unit"),
                     "best AUROC": entry.get("best_auroc"),
                     "units > 0.9": entry.get("n_units_above_0.9"),
                     "null best AUROC": entry.get("null_best_auroc")})
    return pd.DataFrame(rows)


def _confounders(run: RunDir, level: float) -> str:
    folder = run.root / CONFOUNDERS_DIR
    out = ["<h2>Confounders: is it there, and where</h2>"]
    if not folder.exists():
        return out[0] + missing("confounders", f"pathosae confounders --run {run.root}")
    out.extend(_pngs(folder, "Confounder figures"))
    leak = folder / LEAKAGE
    if leak.exists():
        out.append("<h3>Leakage probes</h3>" + table(readable(_main_probes(pd.read_parquet(leak)),
                                                              level), max_rows=60))
        out.append(how("Cross-validated probes predicting each confounder (folds by patient): a "
                       "confidence interval above the chance level's upper quantile means the "
                       "information is there, even where no single unit carries it. Other "
                       "schemes and subsets are in the appendix."))
    robust = folder / ROBUSTNESS
    if robust.exists():
        frame = pd.read_parquet(robust)
        shown = [c for c in ("representation", "variable", "confounder", "ri", "mari", "croma",
                             "croma_support", "croma_reason") if c in frame]
        out.append("<h3>Robustness (croma)</h3>" + table(readable(frame[shown], level)))
        out.append(how("RI and MaRI: how often a slide's nearest neighbours share its biology "
                       "rather than its confounder; CRoMa > 0 when biology dominates. Read each "
                       "beside its support."))
    assoc = folder / ASSOCIATIONS
    if assoc.exists():
        out.append(_associations(pd.read_parquet(assoc), level))
    return "".join(out)


def _main_probes(leakage: pd.DataFrame) -> pd.DataFrame:
    frame = leakage
    if "scheme" in frame:
        frame = frame[frame["scheme"] == "patient_folds"]
    if "subset" in frame:
        frame = frame[frame["subset"] == "all"]
    shown = [c for c in ("variable", "representation", "auroc", "auroc_low", "auroc_high",
                         "chance_auroc", "chance_auroc_high", "balanced_accuracy",
                         "chance_balanced_accuracy", "n") if c in frame]
    return frame[shown]


def _associations(frame: pd.DataFrame, level: float) -> str:
    if "q" not in frame:
        return ""
    significant = frame[frame["q"] < 0.05]
    out = [f"<h3>Unit associations</h3><p>{len(significant)} of {len(frame)} unit × variable "
           "tests pass FDR 0.05 (Benjamini–Hochberg).</p>"]
    if "flagged" in frame:
        slide = frame[frame["level"] == "slide"] if "level" in frame else frame
        counts = (slide[slide["flagged"].fillna(False).astype(bool)].groupby("variable")["unit"]
                  .nunique().rename("units flagged (slide level)").reset_index())
        out.append(table(readable(counts, level)))
    shown = [c for c in ("unit", "variable", "aggregation", "level", "effect", "signed_effect",
                         "p", "q", "direction", "n_nonzero", "stable") if c in frame]
    out.append(table(readable(frame.sort_values("q").head(20)[shown], level)))
    out.append(how("Strongest unit–metadata associations on slide-level activations; q is the "
                   "BH-adjusted p-value across all units and variables."))
    return "".join(out)


def _edits(run: RunDir, verdicts: list[Verdict], level: float) -> str:
    path = run.root / EDITS_DIR / EFFECTS
    head = "<h2>Edits: which fix restores generalisation</h2>"
    if not path.exists():
        return head + missing("edit", f"pathosae edit --run {run.root}")
    frame = pd.read_parquet(path)
    out = [head]
    out.extend(_pngs(path.parent, "Edit figures"))
    if verdicts and any(v.fixes for v in verdicts):
        out.append(how("The forest plots in the verdict show every edit and baseline of each "
                       "confounder; the table below has the same numbers and more."))
    out.append(table(readable(_effects_shown(frame), level), max_rows=60))
    out.append(how("One row per edit and baseline and mode (random-unit draws are summarised in "
                   "the verdict's band and listed in the appendix): compare shifted-test and "
                   "worst-site accuracy and the leakage left after each edit against no edit."))
    return "".join(out)


def _effects_shown(frame: pd.DataFrame) -> pd.DataFrame:
    kept = frame[frame["kind"] != "random"] if "kind" in frame else frame
    kept = kept.assign(edit=[fix_title(str(e)) for e in kept["edit"]]) if "edit" in kept else kept
    columns = ["edit", "kind", "mode", "bacc_shifted", "worst_site_bacc_shifted",
               "delta_bacc_shifted", "auroc_normal", "bacc_normal", "site_leakage", "flip_rate",
               "croma", "missing_reason"]
    shown = []
    for column in columns:
        shown += [c for c in (column, f"{column}_low", f"{column}_high") if c in kept]
    return kept[shown]


def _saeception(run: RunDir, level: float) -> str:
    path = run.root / SAECEPTION_DIR / SAECEPTION_METRICS
    head = "<h2>SAE-ception</h2>"
    if not path.exists():
        return head + missing("sharpen", f"pathosae sharpen --run {run.root}")
    frame = pd.read_parquet(path)
    last = frame[frame["cycle"] == frame["cycle"].max()] if "cycle" in frame else frame
    shown = []
    for column in ("variant", "seed", "cycle", "bacc_shifted", "worst_site_bacc_shifted",
                   "auroc_normal", "site_leakage", "site_separation"):
        shown += [c for c in (column, f"{column}_low", f"{column}_high") if c in last]
    return (head + "".join(_pngs(path.parent, "SAE-ception figures"))
            + "<h3>Last cycle</h3>" + table(readable(last[shown], level), max_rows=60)
            + how("One row per variant and seed at the last cycle: confounder-injected "
                  "SAE-ception should lower site leakage and raise shifted-test accuracy against "
                  "plain SAE-ception and the no-aux control. Every cycle is in the appendix."))


# One sentence per figure a stage writes: how to read it.
FIGURE_HOW = {
    "heatmap.png": "Signed effect of each significant unit (rows) on each metadata column "
    "(columns): a unit with a strong site or scanner colour and none for the label is an artefact "
    "unit; one that tracks the label alone is a phenotype candidate.",
    "leakage.png": "How well a cross-validated probe predicts each confounder from the raw "
    "embeddings, the SAE codes, the SAE residual and the baselines: bars near chance mean the "
    "confounder is not recoverable from that representation.",
    "metrics.png": "Each SAE-ception variant across cycles (mean over seeds): injected should "
    "end lowest on site leakage and highest on shifted-test accuracy if injection works.",
}


def _pngs(folder: Path, title: str) -> list[str]:
    images = sorted(folder.glob("*.png")) if folder.exists() else []
    if not images:
        return []
    parts = [f"<h3>{esc(title)}</h3>"]
    for path in images:
        caption = FIGURE_HOW.get(path.name, path.name)
        parts.append(f"<figure>{image_file(path)}<figcaption class='how'>{esc(caption)}"
                     "</figcaption></figure>")
    return parts


def _run_details(state: dict) -> str:
    rows = _stage_rows(state)
    versions = ", ".join(f"{k} {v}" for k, v in state.get("versions", {}).items())
    return (RUN_HEADING + (table(pd.DataFrame(rows)) if rows else "")
            + f"<p>Manifest <code>{esc(state.get('manifest'))}</code> (sha256 "
            f"{esc(str(state.get('manifest_sha256', ''))[:12])}…).</p>"
            + f"<p class='how'>Versions: {esc(versions)}</p>")


def _stage_rows(state: dict) -> list[dict[str, object]]:
    """Each recorded stage in pipeline order with its status and duration; the report stage,
    which is writing this page while run.json says "running", is shown done."""
    from pathosae.pipeline import STAGE_NAMES

    stages = state.get("stages", {})
    rows = []
    for name in STAGE_NAMES:
        if name not in stages:
            continue
        info = stages[name]
        status, duration = info.get("status", ""), info.get("duration_s")
        if name == "report" and status == "running":
            status = "done (this report)"
            started = info.get("started")
            duration = round(time.time() - float(started), 1) if started else None
        rows.append({"stage": name, "status": status, "duration (s)": duration})
    return rows


# ---- 3. the appendix ---------------------------------------------------------------------------
RAW_TABLES = (
    (EDITS_DIR, EFFECTS, "Effect table: every edit, baseline and random draw"),
    (CONFOUNDERS_DIR, LEAKAGE, "Leakage probes: every representation, scheme and subset"),
    (CONFOUNDERS_DIR, ROBUSTNESS, "Robustness (croma): every column"),
    (CONFOUNDERS_DIR, PATHOROB, "PathoROB robustness index"),
    (CONFOUNDERS_DIR, CONTROLS, "Confounder scan controls (permuted-metadata nulls)"),
    (CONFOUNDERS_DIR, ASSOCIATIONS, "Unit associations (the 200 smallest q)"),
    (SAECEPTION_DIR, SAECEPTION_METRICS, "SAE-ception metrics: every cycle, variant and seed"),
    (SAECEPTION_DIR, ADAPTER_EDITS, "SAE-ception adapter-layer edits"),
)


def _appendix(run: RunDir, level: float) -> str:
    out = [APPENDIX]
    hashes: list[dict[str, object]] = []
    for folder, name, title in RAW_TABLES:
        path = run.root / folder / name
        if not path.exists():
            continue
        frame = pd.read_parquet(path)
        if name == ASSOCIATIONS and "q" in frame:
            frame = frame.sort_values("q").head(200)
        if SETTINGS_HASH in frame:
            for key in frame[SETTINGS_HASH].dropna().unique():
                hashes.append({"table": f"{folder}/{name}", SETTINGS_HASH: key})
        out.append(details(f"{title} ({len(frame)} rows)", table(readable(frame, level),
                                                                  max_rows=400)))
    hashes += _summary_hashes(run)
    if hashes:
        out.append(details("Settings hashes (the settings and inputs each output was computed "
                           "from)", table(pd.DataFrame(hashes).drop_duplicates(), max_rows=100)))
    if len(out) == 1:
        out.append("<p class='pending'>No table has been written yet.</p>")
    return "".join(out)


def _summary_hashes(run: RunDir) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for folder in (CONFOUNDERS_DIR, EDITS_DIR, SAECEPTION_DIR):
        path = run.root / folder / SUMMARY
        if path.exists():
            key = json.loads(path.read_text()).get(SETTINGS_HASH)
            if key:
                rows.append({"table": f"{folder}/{SUMMARY}", SETTINGS_HASH: key})
    return rows


__all__ = ["APPENDIX", "build_report"]
