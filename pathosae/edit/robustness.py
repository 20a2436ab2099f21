"""croma's robustness metrics of edited embeddings, for the effect table.

On the pooled test slides (normal and shifted) of the edited splits: a capped, seeded sample of
tiles per slide (the same tiles for every candidate, since edits keep the rows), each tile
labelled with its slide's class and site and grouped by its patient, scored with RI, MaRI and
CRoMa (:mod:`pathosae.confounders.robustness`): does the edit move the tiles' neighbourhoods from
the site towards the biology?
"""

from __future__ import annotations

import numpy as np

from pathosae.confounders.robustness import croma_metrics
from pathosae.downstream.splits import Splits

#: The effect table's croma columns (``croma_reason``: why one is NaN or partial).
EDIT_ROBUSTNESS_COLUMNS = ("ri", "mari", "croma", "croma_support", "croma_reason")
TILES_PER_SLIDE = 32
MAX_TILES = 2000


def sample_tiles(slide: np.ndarray, per_slide: int, seed: int) -> np.ndarray:
    """Sorted row indices: at most ``per_slide`` rows of every slide, a seeded draw."""
    order = np.lexsort((np.random.default_rng(seed).random(len(slide)), slide))
    ordered = slide[order]
    starts = np.searchsorted(ordered, ordered, side="left")  # first row of each row's slide
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < per_slide])


def pooled_robustness(
    splits: Splits, seed: int, tiles_per_slide: int = TILES_PER_SLIDE, max_tiles: int = MAX_TILES,
) -> dict[str, object]:
    """RI, MaRI, CRoMa and CRoMa's support of the pooled test tiles (label and site of their
    slide; at most ``tiles_per_slide`` per slide and about ``max_tiles`` in all)."""
    pooled = splits.pooled_test_index()  # the sampled rows' embeddings are taken below
    slide = pooled.slide.numpy()
    if pooled.n_slides == 0 or len(slide) == 0:
        return {"ri": float("nan"), "mari": float("nan"), "croma": float("nan"),
                "croma_support": 0.0, "croma_reason": "no test tiles"}
    per_slide = max(1, min(tiles_per_slide, max_tiles // pooled.n_slides))
    rows = sample_tiles(slide, per_slide, seed)
    of = slide[rows]
    metrics = croma_metrics(splits.pooled_test_rows(rows).numpy(), pooled.y.numpy()[of].astype(str),
                            np.asarray(pooled.site)[of], np.asarray(pooled.patient)[of])
    return {name: metrics[name] for name in EDIT_ROBUSTNESS_COLUMNS}
