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


def flag_confounded_units(
    codes: Tensor,
    slide: Tensor,
    metadata: pd.DataFrame,
    variables: list[str],
    label: str = "label",
    alpha: float = 0.05,
) -> Tensor:
    """Units whose slide-aggregated codes associate with any of ``variables`` (q ≤ alpha).

    ``metadata`` has one row per slide (position = ``slide`` id) with the ``label`` column, held
    as a covariate so that a unit carrying the biology is not flagged for the correlated site.
    """
    slide_ids = slide.numpy().astype(str)
    order, summaries = aggregate_by_group(codes.numpy(), slide_ids, ("mean", "frac_active"))
    meta = metadata.iloc[np.asarray(order, dtype=int)].reset_index(drop=True)
    tables = []
    for name, matrix in summaries.items():
        table = association_scan(matrix, meta, variables, covariates=[label])
        tables.append(table.assign(aggregation=name))
    table = add_qvalues(pd.concat(tables, ignore_index=True))
    mask = np.zeros(codes.shape[1], dtype=bool)
    for var in variables:
        mask |= flagged_units(table, var, alpha, codes.shape[1])
    return torch.from_numpy(mask)


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
