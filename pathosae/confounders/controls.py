"""Controls beside the association scan: a permuted-metadata null and the random-encoder SAE.

- Permuted null. The slide-level metadata rows are shuffled across slides as a block (all
  columns move together, so label and site keep their relation to each other but lose any to the
  activations), and the whole scan is rerun: every unit × column × summary, with the BH q-values
  over that whole table as in the real scan. Under this null about ``alpha`` of the p-values fall
  below ``alpha`` and BH lets nothing through in at least 1 − alpha of the repeats; more than
  that means the p-values are not valid (e.g. too few slides for the test's assumptions).
- Random-encoder SAE. The same SAE trained on the features of the encoder's seeded
  random-weights twin. A random network still sees colour, so site and scanner units are
  expected there too; units that track the label mostly are not. The scan's counts for both
  SAEs sit side by side in ``controls.parquet``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from pathosae.confounders.scan import Correlation, Kind, add_qvalues, association_scan
from pathosae.progress import bar

NULL_REPEATS = 20


def scan_counts(associations: pd.DataFrame, alpha: float, level: str = "slide") -> pd.DataFrame:
    """Per variable: tests, p ≤ alpha, q ≤ alpha, and distinct units flagged (one level)."""
    table = associations[associations["level"] == level] if "level" in associations else associations
    rows = []
    for variable, group in table.groupby("variable", sort=False):
        p = group["p"].to_numpy(float)
        q = group["q"].to_numpy(float)
        finite = np.isfinite(p)
        rows.append({
            "variable": str(variable),
            "n_tests": int(finite.sum()),
            "n_p_below_alpha": int((p[finite] <= alpha).sum()),
            "expected_p_below_alpha": float(alpha * finite.sum()),
            "n_fdr_pass": int((q[finite] <= alpha).sum()),
            "n_units_flagged": int(group.loc[group["q"] <= alpha, "unit"].nunique()),
        })
    return pd.DataFrame(rows)


# Public control: the scan's inputs and settings (mirroring the confounders config) pass through,
# the options keyword-only.
def permuted_null_repeats(  # noqa: PLR0913
    codes: Mapping[str, np.ndarray],
    slides: pd.DataFrame,
    variables: list[str],
    covariates: list[str],
    kinds: dict[str, Kind],
    alpha: float,
    seed: int,
    *,
    repeats: int = NULL_REPEATS,
    correlation: Correlation = "pearson",
    max_permutations: int = 0,
) -> pd.DataFrame:
    """One row per repeat: the slide-level scan of every aggregation on shuffled metadata."""
    rng = np.random.default_rng(seed)
    rows = []
    for repeat in bar(range(repeats), "confounders: permuted-metadata null", unit="repeat"):
        order = rng.permutation(len(slides))
        shuffled = slides.iloc[order].reset_index(drop=True)
        frames = [
            association_scan(matrix, shuffled, variables, covariates, kinds, correlation,
                             max_permutations=max_permutations, seed=seed + repeat)
            for matrix in codes.values()
        ]
        table = add_qvalues(pd.concat(frames, ignore_index=True))
        p = table["p"].to_numpy(float)
        finite = np.isfinite(p)
        rows.append({
            "repeat": repeat,
            "n_tests": int(finite.sum()),
            "n_p_below_alpha": int((p[finite] <= alpha).sum()),
            "expected_p_below_alpha": float(alpha * finite.sum()),
            "n_fdr_pass": int((table["q"].to_numpy(float)[finite] <= alpha).sum()),
        })
    return pd.DataFrame(rows)


def summarise_null(null: pd.DataFrame, alpha: float) -> dict[str, float | int]:
    """The null's headline figures with what a valid test would give."""
    if null.empty:
        return {}
    n_tests = int(null["n_tests"].sum())
    below = int(null["n_p_below_alpha"].sum())
    return {
        "repeats": len(null),
        "frac_p_below_alpha": round(below / n_tests, 4) if n_tests else float("nan"),
        "expected_frac_p_below_alpha": alpha,
        "fdr_passes_total": int(null["n_fdr_pass"].sum()),
        "repeats_with_any_fdr_pass": int((null["n_fdr_pass"] > 0).sum()),
        "expected_repeats_with_any_fdr_pass_at_most": round(alpha * len(null), 2),
    }
