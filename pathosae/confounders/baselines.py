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

COMBAT_CHUNK_ROWS = 4096
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
    return combat_train_apply_parts([np.asarray(x)], batch, is_train, protect, fit_max_rows,
                                    chunk, seed)[0]


def combat_train_apply_parts(
    parts: list[np.ndarray],
    batch: np.ndarray | pd.Series,
    is_train: np.ndarray,
    protect: np.ndarray | pd.Series | None = None,
    fit_max_rows: int | None = None,
    chunk: int = COMBAT_CHUNK_ROWS,
    seed: int = 0,
) -> list[np.ndarray]:
    """``combat_train_apply`` on row blocks that follow one another (e.g. the train, normal and
    shifted tiles), without concatenating them: ``batch``, ``is_train`` and ``protect`` cover
    the rows of all parts in order, and each part gets its own harmonised matrix."""
    from combatlearn import ComBat

    is_train = np.asarray(is_train, dtype=bool)
    index = pd.RangeIndex(len(is_train))
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
    rows = _PartRows(parts)
    fit_rows = seeded_subset(np.flatnonzero(is_train), fit_max_rows, seed)
    outs = [np.empty(p.shape, dtype=p.dtype if p.dtype.kind == "f" else np.float64) for p in parts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small-batch advice, not an error
        model.fit(rows.frame(fit_rows))
        for start in range(0, len(is_train), chunk):
            chunk_rows = np.arange(start, min(start + chunk, len(is_train)))
            rows.write(outs, chunk_rows, np.asarray(model.transform(rows.frame(chunk_rows))))
    return outs


class _PartRows:
    """Global row numbers over parts that follow one another."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def _pieces(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(part, positions in ``rows``, local rows of that part) for every part touched."""
        owner = np.searchsorted(self.offsets, rows, side="right") - 1
        return [(int(k), np.flatnonzero(owner == k), rows[owner == k] - self.offsets[k])
                for k in np.unique(owner)]

    def frame(self, rows: np.ndarray) -> pd.DataFrame:
        """float64 rows indexed by their global row numbers (ComBat looks labels up by index)."""
        values = np.empty((len(rows), self.parts[0].shape[1]), dtype=np.float64)
        for k, where, local in self._pieces(rows):
            values[where] = self.parts[k][local]
        return pd.DataFrame(values, index=pd.Index(rows))

    def write(self, outs: list[np.ndarray], rows: np.ndarray, values: np.ndarray) -> None:
        for k, where, local in self._pieces(rows):
            outs[k][local] = values[where]


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
