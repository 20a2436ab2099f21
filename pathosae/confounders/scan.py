"""Vectorised association scan: every unit against every metadata column, with covariates.

tensorQTL-style: the covariates are residualised once by a QR decomposition, and all units are
tested with a handful of matrix products. Each test is the nested-model F test of
``unit ~ 1 + covariates + variable`` against ``unit ~ 1 + covariates``, exactly what a per-unit
statsmodels OLS fit gives:

- categorical column with k levels: F with (k-1, n-c-k+1) degrees of freedom, effect = partial
  eta² (SS_variable / (SS_variable + SS_residual));
- continuous column: partial Pearson r on the residuals, t² = dof·r²/(1−r²), two-sided p from t,
  effect = r² (the partial eta² of a 1-df term), signed effect = r (the standardised slope of the
  residualised unit on the residualised column). ``spearman`` ranks units (and a continuous
  column) first: rank-based tests.

Dead units (no variance left after the covariates) get p = NaN and are left out of the FDR.
With ``max_permutations`` the p-values come from permutations of the slides instead, where the
F/t tails are too light for sparse units at tens of slides (:mod:`.calibrate`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pathosae.confounders.calibrate import permutation_pvalues
from pathosae.errors import PathosaeError

Kind = Literal["categorical", "continuous"]
Correlation = Literal["pearson", "spearman"]
_TINY = 1e-12  # relative size below which a sum of squares counts as zero
# Parametric p above this keeps its value when permutation p-values are asked for: BH never
# reaches it (its largest threshold is alpha), and the F tail is only far off deep in the tail.
CALIBRATE_BELOW = 0.1


@dataclass(frozen=True)
class Design:
    """One column's test design on the rows where it and the covariates are known."""

    variable: str
    kind: Kind
    rows: np.ndarray  # bool mask over samples
    basis: np.ndarray  # orthonormal basis of [1, covariates] on those rows (n × c)
    effect_basis: np.ndarray  # orthonormal basis of the residualised variable design (n × k')
    effect_design: np.ndarray  # residualised variable design (n × k'), for signed coefficients
    levels: tuple[str, ...]  # categorical levels (first = reference); empty for continuous
    coef_map: np.ndarray  # (k' × k') maps effect-basis projections to regression coefficients
    held: tuple[str, ...] = ()  # covariates in the basis

    @property
    def n(self) -> int:
        return int(self.rows.sum())

    @property
    def df_effect(self) -> int:
        return int(self.effect_basis.shape[1])

    @property
    def df_resid(self) -> int:
        return self.n - self.basis.shape[1] - self.df_effect


def infer_kind(values: pd.Series, override: Kind | None = None) -> Kind:
    """Text, boolean and two-valued columns are categorical; other numbers are continuous."""
    if override is not None:
        return override
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "categorical"
    return "categorical" if values.dropna().nunique() <= 2 else "continuous"


def covariate_matrix(frame: pd.DataFrame, columns: list[str], kinds: dict[str, Kind]) -> np.ndarray:
    """Covariates as numbers: categorical ones one-hot with the first level dropped."""
    blocks = [np.ones((len(frame), 1))]
    for col in columns:
        if kinds.get(col) == "categorical" or infer_kind(frame[col]) == "categorical":
            codes = frame[col].astype("string")
            dummies = pd.get_dummies(codes, drop_first=True, dtype=float)
            dummies[codes.isna().to_numpy()] = np.nan
            blocks.append(dummies.to_numpy())
        else:
            blocks.append(pd.to_numeric(frame[col], errors="coerce").to_numpy(float)[:, None])
    return np.hstack(blocks)


def _orthonormal(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space (rank-revealing, so collinear columns drop out)."""
    if matrix.shape[1] == 0:
        return matrix
    q, r, _ = _pivoted_qr(matrix)
    diag = np.abs(np.diag(r))
    rank = int((diag > _TINY * max(diag.max(initial=0.0), 1.0) * max(matrix.shape)).sum())
    return q[:, :rank]


def _pivoted_qr(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy.linalg import qr

    return qr(matrix, mode="economic", pivoting=True)


def build_design(
    variable: str,
    values: pd.Series,
    covariates: np.ndarray,
    kind: Kind,
    rank_transform: bool = False,
) -> Design | None:
    """The QR bases for one column; None when the column has fewer than two levels or values."""
    known = values.notna().to_numpy() & np.isfinite(covariates).all(axis=1)
    basis = _orthonormal(covariates[known])
    if kind == "categorical":
        text = values[known].astype("string")
        levels = tuple(sorted(text.unique()))
        if len(levels) < 2:
            return None
        design = (text.to_numpy()[:, None] == np.array(levels[1:])[None, :]).astype(float)
    else:
        y = pd.to_numeric(values[known], errors="coerce").to_numpy(float)
        if rank_transform:
            y = stats.rankdata(y)
        design, levels = y[:, None], ()
    resid = design - basis @ (basis.T @ design)
    effect_basis = _orthonormal(resid)
    if effect_basis.shape[1] == 0 or known.sum() - basis.shape[1] - effect_basis.shape[1] < 1:
        return None
    # coefficients of the residualised design: pinv(E) r = pinv(E) Qe Qe^T r for any residual r
    coef_map = np.linalg.pinv(resid) @ effect_basis
    return Design(variable, kind, known, basis, effect_basis, resid, levels, coef_map)


def unit_statistics(x: np.ndarray, design: Design) -> dict[str, np.ndarray]:
    """All statistics for the units in ``x`` (the design's rows × units, float64, centred)."""
    cov_proj = design.basis.T @ x
    proj = design.effect_basis.T @ x
    ss_x = np.einsum("ij,ij->j", x, x)
    return statistics_from_products(ss_x, np.einsum("ij,ij->j", cov_proj, cov_proj), proj, design)


def statistics_from_products(
    ss_x: np.ndarray, ss_cov: np.ndarray, proj: np.ndarray, design: Design
) -> dict[str, np.ndarray]:
    """Statistics from three products of the centred units x: ||x||², ||Qᵀx||² and Qeᵀx.

    Qe is orthogonal to the covariate basis Q, so Qeᵀx equals Qeᵀ(residual of x), and the
    residual sum of squares after the covariates is ||x||² − ||Qᵀx||²: no residual matrix is
    ever formed, and columns sharing rows and covariates share one matrix product.
    """
    ss_total = np.maximum(ss_x - ss_cov, 0.0)
    ss_effect = np.einsum("ij,ij->j", proj, proj)
    ss_resid = np.maximum(ss_total - ss_effect, 0.0)
    dead = ss_total <= _TINY * np.maximum(ss_x, 1.0)
    df1, df2 = design.df_effect, design.df_resid
    with np.errstate(divide="ignore", invalid="ignore"):
        eta2 = np.where(dead, np.nan, ss_effect / ss_total)
        fstat = np.where(dead, np.nan, (ss_effect / df1) / (ss_resid / df2))
    coefs = design.coef_map @ proj  # (k' × units)
    if design.kind == "continuous":
        signed = np.sign(coefs[0]) * np.sqrt(eta2)
        pvalue = 2 * stats.t.sf(np.sqrt(fstat), df2)
        direction = np.where(coefs[0] >= 0, "+", "-").astype(object)
    else:
        pvalue = stats.f.sf(fstat, df1, df2)
        adjusted = np.vstack([np.zeros((1, coefs.shape[1])), coefs])  # reference level at 0
        direction = np.array(design.levels, dtype=object)[np.argmax(adjusted, axis=0)]
        signed = np.sign(coefs[0]) * np.sqrt(eta2) if len(design.levels) == 2 else eta2 * np.nan
    direction[dead] = ""
    return {
        "effect": eta2,
        "signed_effect": signed,
        "slope": coefs[0] if coefs.shape[0] == 1 else np.full(len(ss_x), np.nan),
        "statistic": fstat,
        "p": np.where(dead, np.nan, pvalue),
        "direction": direction,
    }


def _unit_chunks(n_units: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n_units, chunk):
        yield slice(start, min(start + chunk, n_units))


# The public scan: its keyword-only options mirror the confounders config (correlation,
# scan_permutations, seed) and chunking, so they stay plain arguments.
def association_scan(  # noqa: PLR0913
    activations: np.ndarray,
    metadata: pd.DataFrame,
    variables: list[str],
    covariates: list[str] | None = None,
    kinds: dict[str, Kind] | None = None,
    correlation: Correlation = "pearson",
    *,
    chunk_units: int = 4096,
    min_nonzero: float = 0.2,
    max_permutations: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Test every unit (column of ``activations``, samples × units) against every variable.

    A unit non-zero in fewer than ``min_nonzero`` of the samples (a fraction, at least 5
    samples) is not tested (p is NaN, so it stays out of the FDR correction): an F or t test on a
    column that is almost all zeros is not valid at small n, and such units passed FDR under
    permuted metadata far above the nominal rate.

    Returns one row per unit × variable: unit, variable, kind, effect (partial eta²),
    signed_effect (partial r; binary and continuous only), slope, statistic (F), df1, df2, p,
    direction (the level with the highest adjusted mean, or +/-), n. Add q with ``add_qvalues``.

    ``max_permutations`` > 0 replaces p by a permutation p-value (sequential, up to that many
    permutations of the slides; see :mod:`pathosae.confounders.calibrate`) for every test whose
    parametric p (kept as ``p_parametric``) is at most ``CALIBRATE_BELOW``: the others are far
    from any FDR threshold. ``n_permutations`` says how many each test used (0: parametric).
    """
    covariates = list(covariates or [])
    kinds = dict(kinds or {})
    _check_inputs(activations, metadata, [*variables, *covariates])
    kinds = {c: infer_kind(metadata[c], kinds.get(c)) for c in [*variables, *covariates]}
    spearman = correlation == "spearman"
    designs = []
    for var in variables:
        held = [c for c in covariates if c != var]  # a column is never its own covariate
        cov = covariate_matrix(metadata, held, kinds)
        design = build_design(var, metadata[var], cov, kinds[var], spearman)
        if design is not None:
            designs.append(replace(design, held=tuple(held)))
    if not designs:
        return _empty_table()
    parts: dict[str, dict[str, list[np.ndarray]]] = {d.variable: {} for d in designs}
    for cols in _unit_chunks(activations.shape[1], chunk_units):
        block = np.asarray(activations[:, cols], dtype=np.float64)
        for group in _share_groups(designs, spearman):
            for design, values in _scan_group(block, group, spearman):
                for key, value in values.items():
                    parts[design.variable].setdefault(key, []).append(value)
    nonzero = _nonzero_counts(activations, chunk_units)
    testable = nonzero >= max(5, int(np.ceil(min_nonzero * activations.shape[0])))
    frames = [_as_frame(d, parts[d.variable], activations.shape[1]) for d in designs]
    for frame in frames:
        frame["n_nonzero"] = nonzero
        frame.loc[~testable, "p"] = np.nan
    if max_permutations > 0:
        for design, frame in zip(designs, frames, strict=True):
            _permutation_p(activations, design, frame, spearman, max_permutations, seed, chunk_units)
    return pd.concat(frames, ignore_index=True)


def _permutation_p(
    activations: np.ndarray, design: Design, frame: pd.DataFrame, spearman: bool,
    max_permutations: int, seed: int, chunk_units: int,
) -> None:
    """Replace the frame's p by permutation p-values where they could matter."""
    frame["p_parametric"] = frame["p"]
    p = frame["p"].to_numpy(float).copy()
    used = np.zeros(len(p), dtype=np.int64)
    units = np.flatnonzero(p <= CALIBRATE_BELOW)
    for cols in _unit_chunks(len(units), chunk_units):
        x = np.asarray(activations[:, units[cols]], dtype=np.float64)[design.rows]
        if spearman:
            x = stats.rankdata(x, axis=0)
        p[units[cols]], used[units[cols]] = permutation_pvalues(
            x - x.mean(axis=0), design.basis, design.effect_basis, max_permutations, seed)
    frame["p"] = p
    frame["n_permutations"] = used


def _nonzero_counts(activations: np.ndarray, chunk_units: int) -> np.ndarray:
    counts = np.zeros(activations.shape[1], dtype=np.int64)
    for cols in _unit_chunks(activations.shape[1], chunk_units):
        counts[cols] = (np.asarray(activations[:, cols]) != 0).sum(axis=0)
    return counts


def _share_groups(designs: list[Design], spearman: bool) -> list[list[Design]]:
    """Designs with the same rows and covariates share one product (Spearman ones stand alone)."""
    groups: dict[object, list[Design]] = {}
    for i, design in enumerate(designs):
        alone = spearman and design.kind == "continuous"
        key = i if alone else (design.rows.tobytes(), design.held)
        groups.setdefault(key, []).append(design)
    return list(groups.values())


def _scan_group(
    block: np.ndarray, group: list[Design], spearman: bool
) -> Iterator[tuple[Design, dict[str, np.ndarray]]]:
    first = group[0]
    x = block if first.rows.all() else block[first.rows]
    if spearman:
        # Rank-based tests: each unit is ranked over the samples (a categorical column then gets
        # a Kruskal-Wallis-style ANOVA on ranks), robust to the single outlier slides that make
        # parametric F tests pass FDR under permuted metadata at small n.
        x = stats.rankdata(x, axis=0)
    x = x - x.mean(axis=0)  # centring first keeps the sums of squares exact
    bases = [first.basis, *(d.effect_basis for d in group)]
    products = np.hstack(bases).T @ x  # one pass over the units for the whole group
    ss_x = np.einsum("ij,ij->j", x, x)
    c = first.basis.shape[1]
    ss_cov = np.einsum("ij,ij->j", products[:c], products[:c])
    start = c
    for design in group:
        proj = products[start:start + design.df_effect]
        start += design.df_effect
        yield design, statistics_from_products(ss_x, ss_cov, proj, design)


def _as_frame(design: Design, parts: dict[str, list[np.ndarray]], n_units: int) -> pd.DataFrame:
    table = pd.DataFrame({k: np.concatenate(v) for k, v in parts.items()})
    table.insert(0, "unit", np.arange(n_units))
    table.insert(1, "variable", design.variable)
    table.insert(2, "kind", design.kind)
    table["df1"] = design.df_effect
    table["df2"] = design.df_resid
    table["n"] = design.n
    return table


def _check_inputs(activations: np.ndarray, metadata: pd.DataFrame, columns: list[str]) -> None:
    if activations.ndim != 2:
        raise PathosaeError(f"activations must be samples × units, got shape {activations.shape}.")
    if activations.shape[0] != len(metadata):
        raise PathosaeError(
            f"activations have {activations.shape[0]} rows but the metadata has {len(metadata)}. "
            "Fix: aggregate the units to the same slides (or patients) as the metadata rows."
        )
    missing = [c for c in columns if c not in metadata.columns]
    if missing:
        raise PathosaeError(
            f"metadata has no column(s) {missing}; it has {list(metadata.columns)}. "
            "Fix: correct confounders.variables / confounders.covariates in the config."
        )


def _empty_table() -> pd.DataFrame:
    columns = ["unit", "variable", "kind", "effect", "signed_effect", "slope", "statistic", "p",
               "direction", "df1", "df2", "n", "n_nonzero"]
    return pd.DataFrame({c: [] for c in columns})


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH q-values (``multipletests(method="fdr_bh")``); NaN p-values stay NaN and do not count."""
    pvalues = np.asarray(pvalues, dtype=float)
    q = np.full(pvalues.shape, np.nan)
    finite = np.isfinite(pvalues)
    if finite.any():
        q[finite] = multipletests(pvalues[finite], method="fdr_bh")[1]
    return q


def add_qvalues(table: pd.DataFrame) -> pd.DataFrame:
    """Add the q column over all rows of the table at once (all units × columns × summaries)."""
    table = table.copy()
    table["q"] = benjamini_hochberg(table["p"].to_numpy())
    return table
