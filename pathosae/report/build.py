"""Assemble RUN/report.html from the files the stages wrote (each section reads one stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pathosae.config import PathosaeConfig
from pathosae.io import write_text_atomic
from pathosae.report.html import STYLE, esc, how, image_file, missing, table
from pathosae.run import RunDir
from pathosae.types import OnError


def build_report(run: RunDir) -> Path:
    state = run.read_state()
    sections = [
        _header(run, state),
        _cohort(run),
        _sae(run),
        _confounders(run),
        _edits(run),
        _saeception(run),
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>pathosae report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )
    target = run.root / "report.html"
    write_text_atomic(target, page)
    return target


def run_stage(run: RunDir, cfg: PathosaeConfig, on_error: OnError) -> dict[str, object]:
    path = build_report(run)
    return {"report": str(path), "size_kb": round(path.stat().st_size / 1024)}


def _header(run: RunDir, state: dict) -> str:
    from pathosae.pipeline import STAGE_NAMES

    stages = state.get("stages", {})
    rows = [
        {"stage": name, "status": stages[name].get("status", ""),
         "duration (s)": stages[name].get("duration_s")}
        for name in STAGE_NAMES if name in stages
    ]
    versions = ", ".join(f"{k} {v}" for k, v in state.get("versions", {}).items())
    return (
        f"<h1>pathosae run: {esc(run.root.name)}</h1>"
        f"<p>Run directory <code>{esc(run.root)}</code>; manifest <code>{esc(state.get('manifest'))}"
        f"</code> (sha256 {esc(str(state.get('manifest_sha256', ''))[:12])}…).</p>"
        + (table(pd.DataFrame(rows)) if rows else "")
        + f"<p class='how'>Versions: {esc(versions)}</p>"
    )


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
            cross = pd.crosstab([cohort["split"], cohort[label]], cohort[column])
            cross = cross.reset_index()
            cross.columns.name = None
            out.append(f"<h3>{esc(label)} × {esc(column)} by split</h3>" + table(cross))
            out.append(how(f"Rows are split and {label}, columns {column}: a confounded training "
                           f"split has its {label} values concentrated in a few {column} columns."))
    out.append(_qc_grid(run, list(cohort["slide_id"])))
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
    return ("<h3>Tissue detection (QC)</h3><div class='grid'>" + "".join(figures) + "</div>"
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
        stability = (info.get("controls") or {}).get("seed_stability") or {}
        if "mean_cosine" in stability:
            out.append(f"<p>Seed stability: decoder atoms of two seeds matched by the Hungarian "
                       f"method have mean cosine {stability['mean_cosine']:.2f}; "
                       f"{100 * stability.get('fraction_above_0.9', 0):.0f}% of atoms above 0.9."
                       "</p>")
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


def _confounders(run: RunDir) -> str:
    folder = run.root / "confounders"
    out = ["<h2>Confounders</h2>"]
    if not folder.exists():
        return out[0] + missing("confounders", f"pathosae confounders --run {run.root}")
    assoc = folder / "associations.parquet"
    if assoc.exists():
        frame = pd.read_parquet(assoc)
        if "q" in frame:
            significant = frame[frame["q"] < 0.05]
            out.append(f"<p>{len(significant)} of {len(frame)} unit × variable tests pass "
                       "FDR 0.05 (Benjamini–Hochberg).</p>")
            shown = [c for c in ("unit", "variable", "aggregation", "level", "effect",
                                 "signed_effect", "p", "q", "direction", "n_nonzero") if c in frame]
            out.append(table(frame.sort_values("q").head(20)[shown]))
            out.append(how("Strongest unit–metadata associations on slide-level activations; "
                           "q is the BH-adjusted p-value across all units and variables."))
    leak = folder / "leakage.parquet"
    if leak.exists():
        leakage = pd.read_parquet(leak)
        shown = [c for c in ("representation", "variable", "scheme", "balanced_accuracy", "auroc",
                             "chance_balanced_accuracy", "chance_auroc", "n") if c in leakage]
        out.append("<h3>Leakage</h3>" + table(leakage[shown], max_rows=60))
        out.append(how("Cross-validated probes predicting each confounder (folds by patient): "
                       "balanced accuracy well above chance means the information is there, "
                       "even where no single unit carries it."))
    out.extend(_pngs(folder, "Confounder figures"))
    return "".join(out)


def _edits(run: RunDir) -> str:
    path = run.root / "edits" / "effects.parquet"
    head = "<h2>Edits</h2>"
    if not path.exists():
        return head + missing("edit", f"pathosae edit --run {run.root}")
    return (head + table(pd.read_parquet(path), max_rows=60)
            + how("One row per edit and baseline: compare shifted-test and worst-site accuracy "
                  "and the leakage left after each edit against no edit and the random-unit "
                  "edit.") + "".join(_pngs(path.parent, "Edit figures")))


def _saeception(run: RunDir) -> str:
    path = run.root / "saeception" / "metrics.parquet"
    head = "<h2>SAE-ception</h2>"
    if not path.exists():
        return head + missing("sharpen", f"pathosae sharpen --run {run.root}")
    frame = pd.read_parquet(path)
    return (head + table(frame, max_rows=60)
            + how("One row per cycle, variant and seed: confounder-injected SAE-ception should "
                  "lower site leakage and raise shifted-test accuracy against plain SAE-ception "
                  "and the no-aux control.") + "".join(_pngs(path.parent, "SAE-ception figures")))


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


def _flatten(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        flat: dict[str, object] = {}
        for key, value in obj.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): obj}
