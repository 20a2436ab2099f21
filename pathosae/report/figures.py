"""The report's own figures (PNG bytes, drawn with matplotlib's object API: no pyplot state)."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from pathosae.verdict import Fix, Verdict, fix_title

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BETTER = "#1a7f37"  # clears no edit and the random band
EDIT = "#0969da"
BASELINE = "#6e7781"
BAND = "#d0d7de"


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def forest_png(verdict: Verdict) -> bytes | None:
    """Every edit and baseline of ``verdict``: shifted-test balanced accuracy with its interval,
    one panel per mode, no edit as a dashed vertical line, the random-unit draws' band shaded.
    None when no fix has a value."""
    from matplotlib.figure import Figure

    modes = list(dict.fromkeys(f.mode for f in verdict.fixes))
    if not any(_finite(f.bacc_shifted.value) for f in verdict.fixes):
        return None
    names = list(dict.fromkeys(f.name for f in verdict.fixes))
    height = 1.3 + 0.3 * len(names)
    fig = Figure(figsize=(4.6 * len(modes) + 1.8, height), layout="constrained")
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    for ax, mode in zip(axes, modes, strict=True):
        _forest_panel(ax, verdict, mode, names)
    axes[0].set_yticks(range(len(names)), [_label(n, verdict) for n in names], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{verdict.confounder}: balanced accuracy on {verdict.shifted_test} "
                 f"({verdict.level:.0%} CI)", fontsize=10)
    return _png(fig)


def _label(name: str, verdict: Verdict) -> str:
    best = verdict.best
    star = " ★" if best is not None and best.name == name else ""
    return fix_title(name) + star


def _forest_panel(ax: Axes, verdict: Verdict, mode: str, names: list[str]) -> None:
    band = verdict.random_band_by_mode.get(mode)
    if band is not None:
        ax.axvspan(band[0], band[1], color=BAND, alpha=0.7, label="random units (band)")
    ref = verdict.no_edit_by_mode.get(mode)
    if ref is not None and _finite(ref.bacc_shifted.value):
        ax.axvline(ref.bacc_shifted.value, color="0.25", linestyle="--", linewidth=1,
                   label=f"no edit ({ref.bacc_shifted.value:.2f})")
    by_name = {f.name: f for f in verdict.fixes if f.mode == mode}
    best = verdict.best
    for y, name in enumerate(names):
        fix = by_name.get(name)
        if fix is None or not _finite(fix.bacc_shifted.value):
            ax.text(0.02, y, "not measured", va="center", fontsize=7, color=BASELINE,
                    transform=ax.get_yaxis_transform())
            continue
        is_best = best is not None and (best.name, best.mode) == (fix.name, fix.mode)
        _point(ax, fix, y, is_best)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("balanced accuracy")
    ax.set_title(f"{mode}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")


def _point(ax: Axes, fix: Fix, y: int, is_best: bool) -> None:
    colour = BETTER if fix.better else (BASELINE if fix.kind == "baseline" else EDIT)
    iv = fix.bacc_shifted
    if _finite(iv.low, iv.high):
        ax.plot([iv.low, iv.high], [y, y], color=colour, linewidth=2, solid_capstyle="butt")
    ax.plot(iv.value, y, marker="D" if is_best else "o", color=colour,
            markersize=8 if is_best else 5, markeredgecolor="black" if is_best else colour)


__all__ = ["forest_png"]
