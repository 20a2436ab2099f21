"""Which flagged units are findings: stable across SAE seeds, specific to the confounder, large.

With hundreds of slides every small shift is significant, and a dense shift moves every unit's
slide mean, so q < alpha alone separates nothing. A unit × confounder association is a
*finding* when it is

- **specific**: the unit's slide-level association with the confounder holds beyond the label.
  The effect is the partial eta² of the confounder with the label (the configured covariates
  and, by default, the other declared confounders) held fixed: the share of the unit's
  slide-level variance, left after what is held, that the confounder explains. Its null comes
  from the confounder permuted among the patients of each label level (patient level: a
  patient's slides move together), which keeps the label–confounder link of the cohort and
  breaks only what the confounder adds. A unit is
  specific when its effect exceeds the 95th percentile of the largest null effect over all
  units (a family-wise threshold: at most a 5% chance that any unit passes by luck);
- **large enough**: the effect is at least ``confounders.min_effect``;
- **stable**: every other SAE seed has a unit matching its decoder atom at cosine at least
  ``sae.controls.stable_cosine`` (measured by the SAE stage, ``RUN/sae/<name>/stability.parquet``).

A unit that follows the label, and the site only through the label, has no effect beyond the
label and is not specific.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pathosae.confounders.scan import Correlation, Kind, association_scan
from pathosae.schema import PATIENT_ID

NULL_QUANTILE = 0.95
FINDING_COLUMNS = ("effect_beyond_label", "effect_null", "specific", "stable", "finding")


def permute_within_strata(
    meta: pd.DataFrame, variable: str, strata: str | None, rng: np.random.Generator
) -> pd.Series:
    """``variable`` shuffled among the patients of each stratum, mapped back to the slides."""
    patients = meta.drop_duplicates(PATIENT_ID)[[PATIENT_ID, variable,
                                                  *([strata] if strata else [])]]
    shuffled = patients[variable].to_numpy(copy=True)
    groups = patients[strata].astype(str).to_numpy() if strata else np.zeros(len(patients))
    for level in np.unique(groups):
        where = np.flatnonzero(groups == level)
        shuffled[where] = shuffled[rng.permutation(where)]
    mapping = pd.Series(shuffled, index=patients[PATIENT_ID].to_numpy())
    return pd.Series(mapping.loc[meta[PATIENT_ID].to_numpy()].to_numpy(), index=meta.index,
                     name=variable)


def specific_effects(  # noqa: PLR0913 (the scan's settings, passed through)
    codes: np.ndarray, meta: pd.DataFrame, variable: str, label: str | None,
    covariates: list[str], kinds: dict[str, Kind], correlation: Correlation,
    n_permutations: int, seed: int,
) -> tuple[np.ndarray, float]:
    """Per unit, the confounder's partial eta² beyond the label; and the null threshold."""
    held = list(dict.fromkeys([*([label] if label else []), *covariates]))
    held = [c for c in held if c != variable]
    kinds = {c: kinds[c] for c in [variable, *held] if c in kinds}

    def effects(frame: pd.DataFrame) -> np.ndarray:
        table = association_scan(codes, frame, [variable], held, kinds, correlation)
        effect = np.zeros(codes.shape[1])
        if not table.empty:
            tested = table["p"].notna().to_numpy()  # units too sparse to test get no effect
            values = table["effect"].to_numpy(float)
            effect[table["unit"].to_numpy(int)[tested]] = np.nan_to_num(values[tested])
        return effect

    observed = effects(meta)
    if n_permutations <= 0:
        return observed, float("nan")
    rng = np.random.default_rng(seed)
    maxima = [effects(meta.assign(**{variable: permute_within_strata(meta, variable, label, rng)}))
              .max(initial=0.0) for _ in range(n_permutations)]
    return observed, float(np.quantile(maxima, NULL_QUANTILE))


def add_findings(  # noqa: PLR0913 (the scan's settings, passed through)
    associations: pd.DataFrame, codes: dict[str, np.ndarray], meta: pd.DataFrame,
    confounders: list[str], label: str | None, covariates: list[str], kinds: dict[str, Kind],
    correlation: Correlation, n_permutations: int, seed: int, min_effect: float,
    stability: pd.Series | None, beyond_other_confounders: bool = False,
) -> pd.DataFrame:
    """The association table with the finding columns on its slide-level confounder rows.

    ``beyond_other_confounders`` also holds the other declared confounders fixed in each one's
    effect: where the scanner follows the site, a site unit is otherwise "specific" to the
    scanner as well (and the other way round).
    """
    out = associations.assign(effect_beyond_label=np.nan, effect_null=np.nan,
                              specific=pd.NA, stable=pd.NA, finding=pd.NA)
    if stability is not None:
        out["stable"] = out["unit"].map(stability).astype("boolean")
    for variable in confounders:
        for aggregation, matrix in codes.items():
            rows = ((out["variable"] == variable) & (out["level"] == "slide")
                    & (out["aggregation"] == aggregation))
            if not rows.any():
                continue
            others = [c for c in confounders if c != variable] if beyond_other_confounders else []
            effect, null = specific_effects(matrix, meta, variable, label, [*covariates, *others],
                                            kinds, correlation, n_permutations, seed)
            units = out.loc[rows, "unit"].to_numpy(int)
            out.loc[rows, "effect_beyond_label"] = effect[units]
            out.loc[rows, "effect_null"] = null
            out.loc[rows, "specific"] = effect[units] > (null if np.isfinite(null) else 0.0)
    out["specific"] = out["specific"].astype("boolean")
    large = out["effect_beyond_label"] >= min_effect
    stable = out["stable"].fillna(True) if stability is None else out["stable"].fillna(False)
    out["finding"] = (out["flagged"].fillna(False).astype(bool) & out["specific"].fillna(False)
                      & large & stable.astype(bool))
    out.loc[out["specific"].isna(), "finding"] = pd.NA
    out["finding"] = out["finding"].astype("boolean")
    return out
