"""Scoring the scan against planted effects (synthetic cohort) and against a permuted null.

What counts as a true site unit. The synthetic cohort can render every slide twice: as planted
(with its site's stain and scanner effect) and as a counterfactual without it (the reference
stain). The planted effect on a unit is then the paired change of its slide-level activation,
Δ = a(planted) − a(counterfactual). A unit is a *true site unit* when the site explains that
change: the between-site spread of the mean Δ, max over sites of |mean_site(Δ) − mean(Δ)|, is at
least ``min_effect`` standard deviations of the unit's planted slide-level activation. Units
that do not respond to the planted effect, or respond equally at every site, are not site units
whatever the scan says. The definition uses no p-value, so it is not circular with the scan.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pathosae.confounders.scan import Kind, add_qvalues, association_scan


def true_effect_units(
    planted: np.ndarray,
    counterfactual: np.ndarray,
    levels: np.ndarray,
    min_effect: float = 0.5,
) -> np.ndarray:
    """Boolean mask over units: does the unit follow the planted effect of ``levels``?

    ``planted`` and ``counterfactual`` are slides × units slide-level activations of the same
    slides with and without the planted effect; ``levels`` is each slide's site (or scanner...).
    """
    ratio = effect_ratio(planted, counterfactual, levels)
    return np.where(np.isfinite(ratio), ratio >= min_effect, False)


def effect_ratio(planted: np.ndarray, counterfactual: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per unit: between-level spread of the planted change over the unit's planted SD (NaN if
    the unit never varies). ``true_effect_units`` thresholds it."""
    planted = np.asarray(planted, dtype=np.float64)
    delta = planted - np.asarray(counterfactual, dtype=np.float64)
    levels = np.asarray(levels).astype(str)
    overall = delta.mean(axis=0)
    spread = np.zeros(planted.shape[1])
    for level in np.unique(levels):
        spread = np.maximum(spread, np.abs(delta[levels == level].mean(axis=0) - overall))
    scale = planted.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, spread / scale, np.nan)


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision and recall of flagged units against the true units (NaN where undefined)."""
    flagged, truth = np.asarray(flagged, dtype=bool), np.asarray(truth, dtype=bool)
    hits = int((flagged & truth).sum())
    return {
        "n_flagged": int(flagged.sum()),
        "n_true": int(truth.sum()),
        "true_positives": hits,
        "precision": hits / flagged.sum() if flagged.any() else float("nan"),
        "recall": hits / truth.sum() if truth.any() else float("nan"),
    }


def finding_units(associations: pd.DataFrame, variable: str, n_units: int) -> np.ndarray | None:
    """Units that are findings for ``variable`` (specific, large enough, stable; any
    aggregation), or None when the table has no finding decided for it."""
    if "finding" not in associations:
        return None
    rows = associations[associations["variable"] == variable]
    decided = rows["finding"].notna()
    if not decided.any():
        return None
    hits = rows.loc[decided & rows["finding"].fillna(False).astype(bool), "unit"]
    mask = np.zeros(n_units, dtype=bool)
    mask[hits.astype(int).unique()] = True
    return mask


def effect_auroc(associations: pd.DataFrame, variable: str, truth: np.ndarray) -> float:
    """AUROC of each unit's largest effect beyond the label (the findings' size) at telling true
    units from the others; NaN without effects. At hundreds of slides many p-values sit at the
    permutation floor, so the effect ranks where the p-value ties."""
    from sklearn.metrics import roc_auc_score

    if "effect_beyond_label" not in associations:
        return float("nan")
    rows = associations[associations["variable"] == variable]
    best = rows.groupby("unit")["effect_beyond_label"].max().dropna()
    units = best.index.to_numpy(int)
    units = units[units < len(truth)]
    labels = np.asarray(truth, dtype=bool)[units]
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, best.loc[units].to_numpy(float)))


def unit_scores(associations: pd.DataFrame, variable: str, alpha: float,
                truth: np.ndarray) -> dict[str, Any]:
    """Every ground-truth figure of one confounder: the flagged units' precision and recall, the
    p-value ranking's AUROC, and the same for the findings (the units the report headlines)."""
    n_units = len(truth)
    scores: dict[str, Any] = {
        **precision_recall(flagged_units(associations, variable, alpha, n_units), truth),
        **ranking_auroc(associations, variable, truth),
    }
    findings = finding_units(associations, variable, n_units)
    if findings is not None:
        found = precision_recall(findings, truth)
        scores["findings"] = {"n_findings": found["n_flagged"],
                              "true_positives": found["true_positives"],
                              "precision": found["precision"], "recall": found["recall"]}
    scores["effect_auroc"] = effect_auroc(associations, variable, truth)
    return rounded(scores)


def rounded(value: Any) -> Any:
    """Floats to 4 decimals, through nested dicts (ints and the rest as they are)."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return round(float(value), 4)
    return value


def ranking_auroc(associations: pd.DataFrame, variable: str, truth: np.ndarray) -> dict[str, float]:
    """Threshold-free score: AUROC of the scan's ranking (each unit's smallest slide-level p for
    ``variable``) at telling true units from the others, over the units the scan tested."""
    from sklearn.metrics import roc_auc_score

    table = associations[associations["variable"] == variable]
    if "level" in table:
        table = table[table["level"] == "slide"]
    best = table.groupby("unit")["p"].min()
    best = best[np.isfinite(best.to_numpy(float))]
    units = best.index.to_numpy(int)
    units = units[units < len(truth)]
    labels = np.asarray(truth, dtype=bool)[units]
    n_true = int(labels.sum())
    if n_true == 0 or n_true == len(labels):
        return {"n_tested": len(units), "n_true_tested": n_true, "auroc": float("nan")}
    score = -np.log10(np.maximum(best.loc[units].to_numpy(float), 1e-300))
    return {"n_tested": len(units), "n_true_tested": n_true,
            "auroc": float(roc_auc_score(labels, score))}


def flagged_units(associations: pd.DataFrame, variable: str, alpha: float, n_units: int) -> np.ndarray:
    """Units with q ≤ alpha for ``variable`` in any aggregation."""
    hits = associations[(associations["variable"] == variable) & (associations["q"] <= alpha)]
    mask = np.zeros(n_units, dtype=bool)
    mask[hits["unit"].astype(int).unique()] = True
    return mask


def permuted_null(
    activations: np.ndarray,
    metadata: pd.DataFrame,
    variables: list[str],
    covariates: list[str] | None = None,
    kinds: dict[str, Kind] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Scan with the metadata rows shuffled as a block: every association is then null.

    Under that null about ``alpha`` of p-values fall below ``alpha`` and BH lets through nothing
    in at least 1 − alpha of repeats. Covariates travel with the variables (the whole row moves),
    so their relation to the variables is kept.
    """
    rng = np.random.default_rng(seed)
    shuffled = metadata.iloc[rng.permutation(len(metadata))].reset_index(drop=True)
    table = add_qvalues(association_scan(activations, shuffled, variables, covariates, kinds))
    p = table["p"].dropna().to_numpy()
    return {
        "n_tests": len(p),
        "frac_p_below_alpha": float((p <= alpha).mean()) if len(p) else float("nan"),
        "n_fdr_pass": int((table["q"] <= alpha).sum()),
        "alpha": alpha,
    }


def score_against_truth(
    associations: pd.DataFrame,
    variable: str,
    truth: np.ndarray,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Precision/recall of the scan's flagged units for ``variable`` against ``truth``."""
    return precision_recall(flagged_units(associations, variable, alpha, len(truth)), truth)
