"""Scoring flagged SAE units against the atoms and directions planted by ``synth-features``.

A unit is a *true* unit of a confounder (site, scanner, stain batch) when its decoder atom (row
of ``W_dec``) is one of the confounder's planted atoms or lies in its planted dense directions:

- atom match: cosine with some planted atom of any level of the confounder ≥ ``ATOM_COSINE``;
- direction match: the norm of the unit atom's projection on the span of the confounder's level
  directions (the |cosine| with that span) ≥ ``SPAN_COSINE``.

Random unit vectors in R^d have cosines of order 1/sqrt(d) with any fixed atom and projections
of norm about sqrt(levels/d) on a span, far below both thresholds at encoder widths. The
definition uses only the decoder and the planted truth, never a p-value, so it is not circular
with the scan. Precision and recall of the scan's flagged units (q ≤ the FDR level) and the
ranking AUROC of its p-values follow (:mod:`pathosae.confounders.groundtruth`). A check re-draws
the first tiles of a few slides from the seed and compares them with the stored features
(``planted_vs_stored_cosine``, 1.0 when the folder is the one the run imported).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathosae.config import PathosaeConfig
from pathosae.confounders.collect import CodeModel, Collected, SlideFeatures
from pathosae.confounders.groundtruth import finding_units, flagged_units, unit_scores
from pathosae.errors import PathosaeError, StageError
from pathosae.schema import SLIDE_ID
from pathosae.synth.feature_design import build_dictionary
from pathosae.synth.feature_groundtruth import FeatureTruth
from pathosae.synth.features import iter_slide_features

ATOM_COSINE = 0.7
"""A unit matches a planted atom when the cosine of its decoder atom with it is at least this."""
SPAN_COSINE = 0.7
"""A unit lies in a confounder's dense directions when |cos| with their span is at least this."""
CHECK_SLIDES = 4
CHECK_TILES = 64

FeatureScorer = Callable[[Collected, pd.DataFrame], tuple[pd.DataFrame, dict[str, Any]]]


def feature_truth_scorer(gt_dir: Path, cfg: PathosaeConfig, store: SlideFeatures,
                         sae: CodeModel) -> FeatureScorer:
    """The confounders stage's scorer for a ``synth-features`` ground-truth folder."""
    truth = FeatureTruth.load(gt_dir)
    decoder = decoder_atoms(sae)

    def score(data: Collected, associations: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
        table, summary = score_units(decoder, associations, truth, cfg.confounders.fdr_alpha)
        summary["n_slides"] = len(data.slides)
        summary["n_tiles"] = int(np.sum(data.n_tiles))
        summary["planted_vs_stored_cosine"] = stored_cosine(
            truth, store, data.slides[SLIDE_ID].astype(str).tolist())
        return table, summary

    return score


def decoder_atoms(sae: CodeModel) -> np.ndarray:
    """The SAE's decoder atoms as a units x dims float64 array."""
    weights = getattr(sae, "W_dec", None)
    if not isinstance(weights, torch.Tensor) or weights.ndim != 2:
        raise StageError(f"the SAE ({type(sae).__name__}) has no 2-d W_dec decoder matrix, which "
                         "feature-level ground-truth scoring needs. Fix: unset ground_truth for "
                         "this SAE architecture.")
    return weights.detach().to("cpu", torch.float64).numpy()


def true_units(decoder: np.ndarray, truth: FeatureTruth, variable: str) -> pd.DataFrame:
    """Per unit: best cosine with the variable's planted atoms, |cos| with its direction span,
    the matched atom and level, and ``true_unit``."""
    norms = np.linalg.norm(decoder, axis=1, keepdims=True)
    w = np.divide(decoder, norms, out=np.zeros_like(decoder), where=norms > 0)
    n = len(w)
    atom_cos, matched, level = np.full(n, np.nan), np.full(n, -1), np.full(n, "", dtype=object)
    rows = truth.atom_rows(variable)
    if rows:
        cos = w @ truth.atoms[rows].astype(np.float64).T
        best = cos.argmax(axis=1)
        atom_cos = cos[np.arange(n), best]
        matched = np.asarray(rows)[best]
        levels = truth.atom_levels(variable)
        level = np.array([levels[int(r)] for r in matched], dtype=object)
    span = np.full(n, np.nan)
    directions = truth.direction_rows(variable)
    if directions:
        basis, _ = np.linalg.qr(truth.directions[directions].astype(np.float64).T)
        span = np.linalg.norm(w @ basis, axis=1)
    is_true = (np.nan_to_num(atom_cos, nan=-1.0) >= ATOM_COSINE) | (np.nan_to_num(span) >= SPAN_COSINE)
    return pd.DataFrame({"unit": np.arange(n), "effect": variable, "atom_cosine": atom_cos,
                         "matched_atom": matched, "matched_level": level, "span_cosine": span,
                         "true_unit": is_true})


def score_units(decoder: np.ndarray, associations: pd.DataFrame, truth: FeatureTruth,
                alpha: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """groundtruth.parquet rows (unit x confounder) and the summary figures per confounder."""
    tested = set(associations["variable"]) if "variable" in associations else set()
    rows, figures = [], {}
    for variable in truth.variables():
        if variable not in tested:
            continue
        table = true_units(decoder, truth, variable)
        truth_mask = table["true_unit"].to_numpy(bool)
        flagged = flagged_units(associations, variable, alpha, len(decoder))
        figures[variable] = unit_scores(associations, variable, alpha, truth_mask)
        findings = finding_units(associations, variable, len(decoder))
        rows.append(table.assign(flagged=flagged, **({} if findings is None else {"finding": findings})))
    summary: dict[str, Any] = {
        **figures,
        "kind": "features",
        "min_effect": None,
        "atom_cosine": ATOM_COSINE,
        "span_cosine": SPAN_COSINE,
        "truth": f"unit whose decoder atom has cosine >= {ATOM_COSINE} with a planted atom of the "
                 f"confounder, or |cos| >= {SPAN_COSINE} with the span of its dense directions",
    }
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()), summary


def stored_cosine(truth: FeatureTruth, store: SlideFeatures, slide_ids: list[str]) -> float:
    """Mean cosine between re-drawn and stored features of the first tiles of a few slides."""
    plans = truth.plans()
    dictionary = build_dictionary(truth.seed, truth.params)
    cosines = []
    for sid in slide_ids[:CHECK_SLIDES]:
        if sid not in plans:
            raise PathosaeError(
                f"slide {sid!r} is not in the synthetic cohort of {truth.gt_dir}. Fix: set "
                "ground_truth to the folder `pathosae synth-features` wrote with this cohort.")
        stored = store.load(sid)[0][:CHECK_TILES].astype(np.float64)
        drawn = next(iter_slide_features(dictionary, plans[sid], truth.seed, truth.params))
        drawn = drawn[: len(stored)].astype(np.float64)
        if drawn.shape != stored.shape:
            return float("nan")
        norms = np.linalg.norm(drawn, axis=1) * np.linalg.norm(stored, axis=1)
        cosines.append(np.einsum("ij,ij->i", drawn, stored) / np.maximum(norms, 1e-12))
    return round(float(np.mean(np.concatenate(cosines))), 4) if cosines else float("nan")
