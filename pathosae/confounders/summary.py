"""The confounder stage's summary.json: counts of flagged units and the probes' AUROCs."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pathosae.confounders.collect import Collected
from pathosae.schema import SETTINGS_HASH


def summarise(
    associations: pd.DataFrame, leakage: pd.DataFrame, data: Collected, key: str,
    plotted: dict[str, bool], alpha: float,
) -> dict[str, Any]:
    flagged = associations[associations["flagged"]]
    per_variable = {str(v): int(g["unit"].nunique()) for v, g in flagged.groupby("variable")}
    findings = {}
    if "finding" in associations and associations["finding"].notna().any():
        held_up = associations[associations["finding"].fillna(False).astype(bool)]
        findings = {str(v): int(held_up.loc[held_up["variable"] == v, "unit"].nunique())
                    for v in associations.loc[associations["finding"].notna(), "variable"].unique()}
    auroc = {}
    if not leakage.empty:
        main = leakage[(leakage["subset"] == "all") & (leakage["scheme"] == "patient_folds")]
        auroc = {f"{r.variable}/{r.representation}": round(float(r.auroc), 4)
                 for r in main.itertuples()}
    return {
        SETTINGS_HASH: key,
        "n_slides": len(data.slides),
        "n_units": int(next(iter(data.codes.values())).shape[1]),
        "n_sampled_tiles": len(data.tile_features),
        "skipped_slides": data.missing,
        "fdr_alpha": alpha,
        "flagged_units": per_variable,
        "findings": findings,
        "probe_auroc": auroc,
        "plots": [f"{k}.png" for k, ok in plotted.items() if ok],
    }
