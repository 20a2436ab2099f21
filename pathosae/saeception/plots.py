"""Per-cycle metrics plotted per variant (mean ± SD over seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PANELS = (
    ("bacc_normal", "balanced acc., normal test"),
    ("bacc_shifted", "balanced acc., shifted test"),
    ("worst_site_bacc_shifted", "worst-site bal. acc., shifted"),
    ("site_leakage", "site leakage (adapter layer)"),
    ("silhouette", "silhouette of SAE codes"),
    ("monosemanticity", "monosemanticity"),
)


def plot_metrics(metrics: pd.DataFrame, path: Path) -> None:
    """A PNG grid: one panel per metric, one line per variant over cycles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (col, title) in zip(axes.flat, PANELS, strict=True):
        for variant, group in metrics.groupby("variant", sort=False):
            stats = group.groupby("cycle")[col].agg(["mean", "std"]).fillna(0.0)
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], label=variant, capsize=3)
        ax.set_title(title)
        ax.set_xlabel("cycle")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
