"""Where the confounder sits in a cycle: flagged SAE units and directions in the adapter space.

Both come from :mod:`pathosae.confounders`: the association scan (slide-aggregated codes against
site/scanner with the label as a covariate, BH q-values) flags units, and class-conditional site
mean differences (or LEACE on class-centred activations) give the directions to project out.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pathosae.confounders.aggregate import aggregate_by_group
from pathosae.confounders.directions import fit_leace, mean_difference_directions
from pathosae.confounders.groundtruth import flagged_units
from pathosae.confounders.scan import add_qvalues, association_scan
from pathosae.saeception.targets import Eraser, orthonormal_basis, project_out

DirectionMethod = Literal["class_site_means", "leace"]
FlagRule = Literal["q", "dominant"]


def flag_confounded_units(
    codes: Tensor,
    slide: Tensor,
    metadata: pd.DataFrame,
    variables: list[str],
    label: str = "label",
    alpha: float = 0.05,
    rule: FlagRule = "dominant",
) -> Tensor:
    """Units whose slide-aggregated codes associate with any of ``variables`` (q ≤ alpha).

    ``metadata`` has one row per slide (position = ``slide`` id) with the ``label`` column, held
    as a covariate so that a unit carrying the biology is not flagged for the correlated site.

    rule ``q``: every unit with q ≤ alpha. rule ``dominant``: of those, only the units where the
    confounder explains more than the label does (partial eta² of the confounder given the label
    above the partial eta² of the label given the confounder, best aggregation of each). Where
    every tile carries a site shift most units pass the q test, and dropping them all strips the
    biology out of the target; a unit is only dropped when it carries more site than label.
    """
    slide_ids = slide.numpy().astype(str)
    order, summaries = aggregate_by_group(codes.numpy(), slide_ids, ("mean", "frac_active"))
    meta = metadata.iloc[np.asarray(order, dtype=int)].reset_index(drop=True)
    n_units = codes.shape[1]
    mask = np.zeros(n_units, dtype=bool)
    for var in variables:
        if meta[var].nunique() < 2:
            continue  # nothing to test: one level in training
        table = add_qvalues(_scan(summaries, meta, [var], [label]))
        hit = flagged_units(table, var, alpha, n_units)
        if rule == "dominant":
            hit &= _best_effect(table, n_units) > _best_effect(
                _scan(summaries, meta, [label], [var]), n_units
            )
        mask |= hit
    return torch.from_numpy(mask)


def _scan(
    summaries: dict[str, np.ndarray], meta: pd.DataFrame, variables: list[str], covariates: list[str]
) -> pd.DataFrame:
    tables = [
        association_scan(matrix, meta, variables, covariates=covariates).assign(aggregation=name)
        for name, matrix in summaries.items()
    ]
    return pd.concat(tables, ignore_index=True)


def _best_effect(table: pd.DataFrame, n_units: int) -> np.ndarray:
    """Per unit, the largest effect (partial eta²) over the table's aggregations; 0 if none."""
    best = table.assign(effect=table["effect"].fillna(0.0)).groupby("unit")["effect"].max()
    out = np.zeros(n_units)
    out[best.index.to_numpy(dtype=int)] = best.to_numpy()
    return out


def confounder_eraser(
    h: Tensor, labels: np.ndarray, sites: np.ndarray, method: DirectionMethod = "class_site_means"
) -> Eraser:
    """A map that removes the site from adapter-layer vectors, fitted on ``h`` (tiles × H).

    class_site_means: project out the span of the class-conditional site mean differences
    around the overall mean. leace: a LEACE eraser of the site fitted on class-centred
    activations (so it removes what separates sites inside a class, not the class).
    """
    x = h.double().numpy()
    if method == "class_site_means":
        directions, _ = mean_difference_directions(x, sites, condition=labels)
        basis = orthonormal_basis(torch.from_numpy(directions))
        centre = h.double().mean(0)
        return lambda t: project_out(t.double(), basis, centre).to(t.dtype)
    centred = x.copy()
    for c in np.unique(labels):
        centred[labels == c] -= centred[labels == c].mean(0)
    eraser = fit_leace(centred, sites)
    return lambda t: eraser(t.double()).to(t.dtype)
