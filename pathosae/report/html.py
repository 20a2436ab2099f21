"""Small HTML helpers: escaped text, tables and images embedded as data URIs."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd
from PIL import Image

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #222; line-height: 1.45; }
h1 { font-size: 1.7rem; } h2 { border-bottom: 2px solid #b03a72; padding-bottom: .2rem;
margin-top: 2.4rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
td, th { border: 1px solid #ccc; padding: .2rem .5rem; text-align: right; }
th { background: #f5eef2; } td:first-child, th:first-child { text-align: left; }
.how { color: #555; font-style: italic; margin: .2rem 0 .8rem; }
.missing { color: #8a5a00; background: #fff6e0; padding: .5rem .8rem; border-radius: 4px; }
.grid { display: flex; flex-wrap: wrap; gap: .6rem; }
.grid figure { margin: 0; font-size: .75rem; text-align: center; }
img { max-width: 100%; }
.kpi { display: inline-block; margin: .3rem 1rem .3rem 0; padding: .5rem .8rem;
       background: #f5eef2; border-radius: 6px; }
.kpi b { font-size: 1.2rem; display: block; }
.verdict { border: 1px solid #d8c3cf; border-left: 6px solid #b03a72; border-radius: 6px;
           padding: .4rem 1rem .6rem; margin: .8rem 0 1.2rem; }
.verdict h3 { margin: .3rem 0; }
.advice { font-size: 1.05rem; font-weight: 600; margin: .3rem 0 .5rem; }
.verdict ul { margin: .2rem 0 .5rem; padding-left: 1.2rem; }
.glance td, .glance th { text-align: left; vertical-align: top; }
.pending { color: #555; background: #f3f3f3; padding: .4rem .8rem; border-radius: 4px; }
details { margin: .5rem 0; } summary { cursor: pointer; font-weight: 600; }
"""

# Column names as a reader says them; a column with ``_low``/``_high`` twins is shown once, with
# its interval, as "<name> (95% CI)".
COLUMN_NAMES = {
    "edit": "edit or baseline", "kind": "kind", "mode": "mode", "n_units": "units edited",
    "draw": "random draw", "missing_reason": "why not measured", "held_out_site": "held-out site",
    "site_leakage": "site leakage (within-class probe balanced accuracy)",
    "site_leakage_estimator": "site leakage estimator",
    "site_leakage_nan_reason": "why no site leakage",
    "auroc_normal": "normal-test AUROC", "bacc_normal": "normal-test balanced accuracy",
    "worst_site_bacc_normal": "normal-test worst-site balanced accuracy",
    "per_site_bacc_normal": "normal-test balanced accuracy per site",
    "auroc_shifted": "shifted-test AUROC", "bacc_shifted": "shifted-test balanced accuracy",
    "worst_site_bacc_shifted": "shifted-test worst-site balanced accuracy",
    "per_site_bacc_shifted": "shifted-test balanced accuracy per site",
    "delta_bacc_shifted": "change in shifted-test balanced accuracy against no edit",
    "flip_rate": "slide predictions flipped",
    "collateral_bacc_drop": "normal-test balanced accuracy drop",
    "seconds": "cost (s)",
    "effect_beyond_label": "effect beyond the label (partial η²)",
    "effect_null": "null threshold of that effect", "specific": "specific",
    "finding": "finding (flagged, specific, large enough, stable)",
    "ri": "RI", "mari": "MaRI", "croma": "CRoMa", "croma_support": "CRoMa support",
    "croma_reason": "croma note", "representation": "representation", "variable": "confounder",
    "scheme": "folds", "subset": "slides", "balanced_accuracy": "probe balanced accuracy",
    "auroc": "probe AUROC", "chance_balanced_accuracy": "chance balanced accuracy",
    "chance_auroc": "chance AUROC", "chance_auroc_high": "chance AUROC (upper quantile)",
    "n": "slides", "n_classes": "levels", "n_folds": "folds", "unit": "unit",
    "aggregation": "aggregation", "level": "level", "effect": "effect size",
    "signed_effect": "signed effect", "p": "p", "q": "q (BH)", "direction": "strongest level",
    "n_nonzero": "slides where the unit is active", "flagged": "flagged", "stable": "stable",
    "variant": "variant", "seed": "seed", "cycle": "cycle",
    "site_separation": "site separation (test)", "site_separation_train": "site separation (train)",
    "sae_fvu": "SAE FVU", "sae_l0": "SAE L0", "sae_dead": "SAE dead fraction",
    "aux_weight": "aux weight λ", "n_top": "top units N", "n_kept": "units kept",
    "n_flagged": "units flagged",
}


def _is_hash(column: str) -> bool:
    return "settings_hash" in column or column == "hash"


def readable(frame: pd.DataFrame, level: float = 0.95, digits: int = 2) -> pd.DataFrame:
    """``frame`` as a reader sees it: settings hashes dropped, each ``x`` with ``x_low`` /
    ``x_high`` shown once as ``"0.62 (0.45–0.80)"`` under "<name> (95% CI)", columns renamed."""
    columns = [c for c in frame.columns if not _is_hash(str(c))]
    names = set(columns)
    bases = {c[:-4] for c in columns if c.endswith("_low") and f"{c[:-4]}_high" in names}
    out: dict[str, object] = {}
    for column in columns:
        base = column[:-4] if column.endswith("_low") else column[:-5] if column.endswith(
            "_high") else column
        if base in bases and column != base and base in names:
            continue  # shown with its point estimate
        if column.endswith("_high") and base in bases:
            continue  # shown with its _low twin
        label = COLUMN_NAMES.get(base, base.replace("_", " "))
        if base in bases:
            point = frame[base] if base in names else None
            out[f"{label} ({level:.0%} CI)"] = [
                _with_interval(None if point is None else point.iloc[i],
                               frame[f"{base}_low"].iloc[i], frame[f"{base}_high"].iloc[i], digits)
                for i in range(len(frame))]
        else:
            out[label] = frame[column].to_numpy()
    return pd.DataFrame(out)


def _with_interval(value: object, low: object, high: object, digits: int) -> str:
    def num(x: object) -> float:
        try:
            return float(x)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return float("nan")

    v, lo, hi = num(value), num(low), num(high)
    bounds = f"{lo:.{digits}f}–{hi:.{digits}f}" if lo == lo and hi == hi else ""
    if value is None:
        return bounds or "–"
    if v != v:
        return "–"
    return f"{v:.{digits}f} ({bounds})" if bounds else f"{v:.{digits}f}"


def details(summary: str, body: str, open_: bool = False) -> str:
    """A collapsed block: ``summary`` is the line a reader clicks."""
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def png_bytes(data: bytes, alt: str = "") -> str:
    """PNG bytes as an inline image."""
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img src='data:image/png;base64,{encoded}' alt='{esc(alt)}'>"


def esc(text: object) -> str:
    return html.escape(str(text))


def table(frame: pd.DataFrame, max_rows: int = 30, floatfmt: str = "{:.3g}") -> str:
    shown = frame.head(max_rows)
    body = shown.to_html(index=False, border=0, float_format=floatfmt.format, na_rep="–",
                         escape=True)
    more = f"<p class='how'>{len(frame) - max_rows} more rows in the file.</p>" if len(
        frame) > max_rows else ""
    return body + more


def image_file(path: Path, max_px: int = 900) -> str:
    """An image file as an inline PNG (downscaled so the report stays small)."""
    with Image.open(path) as opened:
        img = opened.convert("RGB")
        img.thumbnail((max_px, max_px))
        return image(img)


def image(img: Image.Image) -> str:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}'>"


def how(text: str) -> str:
    """The one sentence under a figure that says how to read it."""
    return f"<p class='how'>{esc(text)}</p>"


def missing(stage: str, command: str) -> str:
    return (f"<p class='missing'>The {esc(stage)} stage has not written its outputs yet. "
            f"Produce them with <code>{esc(command)}</code>.</p>")
