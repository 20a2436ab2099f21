"""Baselines beside the SAE view: ComBat on embeddings and Macenko H&E stain normalisation.

- ComBat (``combatlearn``'s scikit-learn ComBat, Fortin's covariate-aware variant): fitted on the
  training slides and applied unchanged to the others, with the task label as a protected
  covariate so the biology is not harmonised away. A batch level absent from training cannot be
  corrected and is an error that names it.
- Stain normalisation: MONAI's Macenko-style ``NormalizeHEStains`` as a tile transform (uint8
  H×W×3 in, uint8 H×W×3 out) that the embedding stage can apply before the encoder.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from pathosae.errors import PathosaeError
from pathosae.sampling import seeded_subset

COMBAT_CHUNK_ROWS = 16_384
"""Rows harmonised at once (combatlearn works on float64 frames with several copies each)."""


def combat_train_apply(
    x: np.ndarray,
    batch: np.ndarray | pd.Series,
    is_train: np.ndarray,
    protect: np.ndarray | pd.Series | None = None,
    fit_max_rows: int | None = None,
    chunk: int = COMBAT_CHUNK_ROWS,
    seed: int = 0,
) -> np.ndarray:
    """ComBat fitted on the rows where ``is_train`` and applied to every row.

    ``batch`` is the confounder (site, scanner, ...), ``protect`` the label kept as a
    covariate. The fit uses at most ``fit_max_rows`` training rows (a seeded draw; None: all);
    the transform, which is row by row, runs ``chunk`` rows at a time, so memory is bounded by
    the fit sample and one chunk. Returns the harmonised matrix (rows × features) in ``x``'s
    float dtype (float64 otherwise).
    """
    from combatlearn import ComBat

    x = np.asarray(x)
    is_train = np.asarray(is_train, dtype=bool)
    index = pd.RangeIndex(len(x))
    batch = pd.Series(np.asarray(batch).astype(str), index=index)
    unseen = sorted(set(batch[~is_train]) - set(batch[is_train]))
    if unseen:
        raise PathosaeError(
            f"ComBat cannot correct batch level(s) {unseen}: they have no training slides. "
            "Fix: put slides of every site/scanner in the training split, or drop the ComBat "
            "baseline (confounders.combat: false)."
        )
    covariates = None
    if protect is not None:
        values = np.asarray(protect).astype(str)
        # Fixed categories: a chunk holding one class must still get every dummy column.
        covariates = pd.DataFrame({"protect": pd.Categorical(values, categories=np.unique(values))},
                                  index=index)
    model = ComBat(batch=batch, discrete_covariates=covariates,
                   method="fortin" if covariates is not None else "johnson")
    fit_rows = seeded_subset(np.flatnonzero(is_train), fit_max_rows, seed)
    out = np.empty(x.shape, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small-batch advice, not an error
        model.fit(_frame(x, fit_rows))
        for start in range(0, len(x), chunk):
            rows = np.arange(start, min(start + chunk, len(x)))
            out[rows] = np.asarray(model.transform(_frame(x, rows)), dtype=np.float64)
    return out


def _frame(x: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """float64 rows of ``x`` indexed by their row numbers (ComBat looks labels up by index)."""
    return pd.DataFrame(np.asarray(x[rows], dtype=np.float64), index=pd.Index(rows))


def he_stain_normaliser(
    target_he: tuple[tuple[float, float], ...] | None = None,
    max_cref: tuple[float, float] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A tile transform: Macenko H&E normalisation to a reference stain (MONAI).

    Tiles with too little stained tissue for the stain estimate (e.g. blank glass) are returned
    unchanged rather than failing the whole slide. The embedding stage uses the same normaliser
    (:class:`pathosae.embedding.stain.HEStainNormaliser`), which also counts those tiles.
    """
    from pathosae.embedding.stain import MAX_CREF, TARGET_HE, HEStainNormaliser

    normaliser = HEStainNormaliser(target_he or TARGET_HE, max_cref or MAX_CREF)

    def transform(tile: np.ndarray) -> np.ndarray:
        return normaliser(tile)[0]

    return transform
