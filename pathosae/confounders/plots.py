"""PNG plots of the confounder stage: a unit × column heatmap and leakage bars."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pathosae.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def heatmap_matrix(
    associations: pd.DataFrame, alpha: float = 0.05, max_units: int = 60
) -> pd.DataFrame:
    """Units (rows) × variables of the signed effect, for units significant somewhere.

    Binary and continuous columns use the signed partial r; multi-level columns use sqrt(eta²).
    Per unit and column the aggregation with the smallest q is shown; the units with the
    smallest q come first.
    """
    sig = associations[associations["q"] <= alpha]
    if sig.empty:
        return pd.DataFrame()
    best = associations.sort_values("q").drop_duplicates(["unit", "variable"])
    value = best["signed_effect"].where(best["signed_effect"].notna(), np.sqrt(best["effect"]))
    matrix = best.assign(value=value).pivot(index="unit", columns="variable", values="value")
    order = sig.groupby("unit")["q"].min().sort_values().index[:max_units]
    return matrix.loc[order]


def plot_heatmap(associations: pd.DataFrame, path: Path, alpha: float = 0.05) -> bool:
    """Write the heatmap; False (and no file) when no unit is significant."""
    matrix = heatmap_matrix(associations, alpha)
    if matrix.empty:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * matrix.shape[1], 1.5 + 0.22 * matrix.shape[0]))
    image = ax.imshow(matrix.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), [f"unit {u}" for u in matrix.index], fontsize=7)
    ax.set_title(f"signed effect of units with q ≤ {alpha:g}")
    fig.colorbar(image, ax=ax, label="partial r (sqrt eta² for multi-level)")
    _save(fig, path)
    plt.close(fig)
    return True


def plot_leakage(leakage: pd.DataFrame, path: Path) -> bool:
    """Bars of probe AUROC per variable and representation (chance marked); False if empty."""
    if leakage.empty:
        return False
    plt = _pyplot()
    table = leakage[leakage["scheme"] == "patient_folds"]
    table = table.pivot_table(index="variable", columns="representation", values="auroc")
    chance = leakage[leakage["scheme"] == "patient_folds"].groupby("variable")["chance_auroc"].mean()
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(table), 3.5))
    width = 0.8 / max(table.shape[1], 1)
    for i, name in enumerate(table.columns):
        ax.bar(np.arange(len(table)) + i * width, table[name], width, label=name)
    for j, var in enumerate(table.index):
        ax.hlines(chance.get(var, 0.5), j - width / 2, j + 0.8 - width / 2, colors="k",
                  linestyles="dashed")
    ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, table.index)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probe AUROC (patient folds); dashed: permuted labels")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)
    plt.close(fig)
    return True
