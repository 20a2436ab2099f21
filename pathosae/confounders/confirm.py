"""Confirm the fast scan's top hits two slower ways.

- A linear mixed model on tiles (statsmodels MixedLM) with a random intercept per slide, and a
  variance component per patient nested above it where patients have several slides: the tile
  count does not inflate the evidence, but the within-slide spread is used.
- A permutation test that shuffles the slide-level column (within strata of the categorical
  covariates, so the biology stays fixed) and recomputes the scan's F statistic.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMResults

from pathosae.confounders.scan import Kind, build_design, covariate_matrix, unit_statistics
from pathosae.schema import PATIENT_ID, SLIDE_ID


def _term(name: str, kind: Kind) -> str:
    return f"C(Q('{name}'))" if kind == "categorical" else f"Q('{name}')"


def mixed_model_p(
    tiles: pd.DataFrame,
    value: str,
    variable: str,
    kind: Kind,
    covariates: dict[str, Kind] | None = None,
) -> dict[str, float]:
    """Wald p of ``variable`` in ``value ~ variable + covariates`` with slide (patient) effects.

    ``tiles`` has one row per tile with ``slide_id`` (and ``patient_id``) and the columns named.
    Returns {"mm_p", "mm_converged"}; mm_p is NaN when the model cannot be fitted.
    """
    covariates = {c: k for c, k in (covariates or {}).items() if c != variable}
    needed = [value, variable, SLIDE_ID, *covariates]
    data = tiles.dropna(subset=needed).copy()
    rhs = " + ".join([_term(variable, kind), *(_term(c, k) for c, k in covariates.items())])
    nested = PATIENT_ID in data and data.groupby(PATIENT_ID)[SLIDE_ID].nunique().gt(1).any()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter; reported via mm_converged
            if nested:
                model = smf.mixedlm(f"Q('{value}') ~ {rhs}", data, groups=data[PATIENT_ID],
                                    vc_formula={"slide": "0 + C(slide_id)"})
            else:
                model = smf.mixedlm(f"Q('{value}') ~ {rhs}", data, groups=data[SLIDE_ID])
            result = _fit(model)
        names = [n for n in result.fe_params.index if n.startswith(_term(variable, kind))]
        if not names:
            return {"mm_p": float("nan"), "mm_converged": False}
        constraint = np.zeros((len(names), len(result.params)))
        for row, name in enumerate(names):
            constraint[row, list(result.params.index).index(name)] = 1.0
        wald = result.wald_test(constraint, scalar=True)
        return {"mm_p": float(wald.pvalue), "mm_converged": bool(result.converged)}
    except (np.linalg.LinAlgError, ValueError) as exc:
        warnings.warn(f"mixed model for {value} ~ {variable} failed: {exc}", stacklevel=2)
        return {"mm_p": float("nan"), "mm_converged": False}


def _fit(model: MixedLM) -> MixedLMResults:
    """REML fit, trying optimisers in turn: L-BFGS can hit a singular step on easy problems."""
    error: Exception | None = None
    for method in ("bfgs", "powell", "nm"):
        try:
            result = model.fit(reml=True, method=method)
        except (np.linalg.LinAlgError, ValueError) as exc:
            error = exc
            continue
        if result.converged:
            return result
    if error is not None:
        raise error
    return result


def _strata(metadata: pd.DataFrame, covariates: dict[str, Kind]) -> np.ndarray:
    categorical = [c for c, k in covariates.items() if k == "categorical"]
    if not categorical:
        return np.zeros(len(metadata), dtype=int)
    keys = metadata[categorical].astype(str).agg("|".join, axis=1)
    return pd.factorize(keys)[0]


def permute_within(values: np.ndarray, strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle ``values`` inside each stratum."""
    out = values.copy()
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        out[idx] = values[rng.permutation(idx)]
    return out


def permutation_p(
    activations: np.ndarray,
    metadata: pd.DataFrame,
    variable: str,
    kind: Kind,
    covariates: dict[str, Kind] | None = None,
    n_permutations: int = 999,
    seed: int = 0,
) -> np.ndarray:
    """Permutation p per unit (columns of ``activations``, one row per slide) for one column.

    p = (1 + #{F_perm ≥ F_obs}) / (1 + n_permutations); all units share each permutation.
    Continuous covariates are regressed out in every permutation but do not form strata.
    """
    covariates = {c: k for c, k in (covariates or {}).items() if c != variable}
    cov = covariate_matrix(metadata, list(covariates), covariates)
    observed = _f_statistics(activations, metadata[variable], cov, kind)
    rng = np.random.default_rng(seed)
    strata = _strata(metadata, covariates)
    values = metadata[variable].to_numpy()
    exceed = np.zeros(activations.shape[1])
    for _ in range(n_permutations):
        shuffled = pd.Series(permute_within(values, strata, rng), index=metadata.index)
        exceed += _f_statistics(activations, shuffled, cov, kind) >= observed - 1e-12
    return (1.0 + exceed) / (1.0 + n_permutations)


def _f_statistics(activations: np.ndarray, values: pd.Series, cov: np.ndarray, kind: Kind) -> np.ndarray:
    design = build_design("perm", values, cov, kind)
    if design is None:
        return np.full(activations.shape[1], np.nan)
    x = np.asarray(activations, dtype=np.float64)[design.rows]
    x = x - x.mean(axis=0)
    return np.nan_to_num(unit_statistics(x, design)["statistic"], nan=-np.inf)
