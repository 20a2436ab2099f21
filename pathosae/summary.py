"""The one-screen summary printed at the end of `pathosae run`: the figures a reader wants first."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd

from pathosae.run import RunDir
from pathosae.schema import CONFOUNDERS_DIR, EDITS_DIR, EFFECTS, REPORT_HTML, SAECEPTION_DIR, SUMMARY
from pathosae.verdict import Verdict, fmt_interval


def run_summary(run: RunDir) -> list[str]:
    """Key figures from whatever stages have finished; stages not run are simply left out."""
    lines = [f"run: {run.root}"]
    for part in (_cohort_line, _sae_line, _confounder_lines, _verdict_lines, _saeception_lines):
        lines.extend(part(run))
    report = run.root / REPORT_HTML
    if report.exists():
        lines.append(f"report: {report}")
        lines.append(f"app:    pathosae app {run.root}")
    return lines


def _cohort_line(run: RunDir) -> list[str]:
    stages = run.read_state().get("stages", {})
    cohort = stages.get("cohort", {}).get("summary") or {}
    tiles = stages.get("tile", {}).get("summary") or {}
    if not cohort:
        return []
    text = f"cohort: {cohort.get('n_slides')} slides, {cohort.get('n_patients')} patients"
    if tiles:
        text += f", {tiles.get('n_tiles')} tiles"
        failed = tiles.get("failed") or []
        if failed:
            text += f" ({len(failed)} slides failed tiling: see tiles/_failed.csv)"
    return [text]


def _sae_line(run: RunDir) -> list[str]:
    lines = []
    for path in sorted((run.root / "sae").glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        held = metrics.get("held_out", metrics)
        fvu, l0, dead = held.get("fvu"), held.get("l0"), held.get("dead_fraction")
        if fvu is None:
            continue
        line = (f"SAE {path.parent.name}: held-out FVU {fvu:.3f}, L0 {l0:.1f}, "
                f"dead {100 * (dead or 0):.1f}%")
        stability = metrics.get("controls", {}).get("seed_stability", {})
        if "n_stable_units" in stability:
            line += (f"; {stability['n_stable_units']} units stable over "
                     f"{len(stability['seeds'])} seeds (cosine ≥ {stability['stable_cosine']:g})")
        lines.append(line)
    return lines


def _confounder_lines(run: RunDir) -> list[str]:
    path = run.root / CONFOUNDERS_DIR / SUMMARY
    if not path.exists():
        return []
    summary = json.loads(path.read_text())
    flagged = summary.get("flagged_units") or {}
    alpha = summary.get("fdr_alpha", 0.05)
    lines = ["units flagged at FDR " + f"{alpha:g}: "
             + ", ".join(f"{k} {v}" for k, v in sorted(flagged.items()))]
    findings = summary.get("findings") or {}
    if findings:
        lines.append("of them findings (specific beyond the label, large enough, stable): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(findings.items())))
    auroc = summary.get("probe_auroc") or {}
    for variable in sorted({k.split("/")[0] for k in auroc}):
        parts = [f"{rep} {auroc[f'{variable}/{rep}']:.2f}" for rep in
                 ("embedding", "sae_codes", "sae_residual") if f"{variable}/{rep}" in auroc]
        lines.append(f"{variable} leakage (probe AUROC): " + ", ".join(parts))
    return lines


def _verdict_lines(run: RunDir) -> list[str]:
    """One line per declared confounder: present? where? the best fix with its interval and
    cost, or how many test slides a decision would need (see :mod:`pathosae.verdict`)."""
    from pathosae.verdict import run_verdicts

    measured = (run.root / CONFOUNDERS_DIR).exists() or (run.root / EDITS_DIR / EFFECTS).exists()
    if not measured:
        return []
    return [verdict_line(v) for v in run_verdicts(run)]


def verdict_line(v: Verdict) -> str:
    """``site: present (probe AUROC ...); lives in directions; best fix ...``."""
    presence = v.presence
    if presence.present is None:
        present = "presence not measured"
    else:
        present = f"{'present' if presence.present else 'not detected'} (probe AUROC " \
                  f"{fmt_interval(presence.auroc, level=v.level)}, chance <= " \
                  f"{presence.chance_high:.2f})"
    where = {"units": "lives in stable SAE units",
             "directions": "lives in directions, not units"}.get(v.location.kind,
                                                                  "location unknown")
    return f"{v.confounder}: {present}; {where}; {_fix_words(v)}"


def _fix_words(v: Verdict) -> str:
    best = v.best
    if best is None:
        return "no fix measured yet"
    ref = v.no_edit_by_mode.get(best.mode)
    before = f" vs {ref.bacc_shifted.value:.2f} without" if ref is not None else ""
    shown = (f"{best.name} ({best.mode}): shifted-test balanced accuracy "
             f"{fmt_interval(best.bacc_shifted, level=v.level)}{before}")
    if v.outcome == "fix":
        cost = best.auroc_normal_cost
        cost_text = f"{cost + 0.0:+.3f}" if cost == cost else "n/a"
        return f"best fix {shown}, normal-test AUROC cost {cost_text}"
    if v.outcome == "too_small":
        need = (f"~{v.slides_needed} test slides needed (now {v.n_shifted_slides})"
                if v.slides_needed is not None else "more test slides needed")
        return f"too small to tell; {need}; best so far {shown}"
    if v.outcome == "no_gain":
        return f"no fix beats no edit; best {shown}"
    return f"no intervals in this run's effect table (rerun the edit stage); best {shown}"


def _num(value: object) -> str:
    """A figure, or why there is none (the within-class site probe needs 3 slides a site)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.3f}" if number == number else "n/a (too few slides per site and class)"


def _saeception_lines(run: RunDir) -> list[str]:
    path = run.root / SAECEPTION_DIR / "metrics.parquet"
    if not path.exists():
        return []
    table = pd.read_parquet(path)
    if table.empty or "variant" not in table:
        return []
    last = table[table["cycle"] == table["cycle"].max()]
    cols = [c for c in ("bacc_shifted", "site_leakage") if c in last]
    means = last.groupby("variant")[cols].mean()
    parts = [f"{v} " + "/".join(_num(means.loc[v, c]).split(" ")[0] for c in cols)
             for v in means.index]
    return [f"SAE-ception, last cycle ({' / '.join(cols)}): " + ", ".join(parts)]


def print_summary(run: RunDir, echo: Callable[[str], object] = print) -> None:
    for line in run_summary(run):
        echo(line)


__all__ = ["print_summary", "run_summary"]
