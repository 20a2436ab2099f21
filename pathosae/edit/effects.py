"""The effect table: one row per edit (or baseline) and mode, measured the same way for all.

Modes: ``applied`` (the downstream model trained on unedited embeddings, applied to edited ones)
and ``retrained`` (a model with the same settings and seed trained on edited embeddings).
Columns: task AUROC / balanced accuracy overall, per site (JSON) and worst site on the normal and
the shifted test; site leakage of the edited embeddings (within-class probe, balanced accuracy);
the fraction of slide predictions that flip against the unedited model of the same mode; the
collateral cost (drop in normal-test balanced accuracy against no edit, same mode).

With ``uncertainty`` settings, each task number (auroc, bacc, worst_site_bacc on the normal and
the shifted test) gets ``<column>_low`` / ``<column>_high``: a patient-level bootstrap interval
over that split's test slides (predictions resampled, models not re-evaluated). Every row uses
the same patient draws, so ``delta_bacc_shifted_low`` / ``_high``, the interval of the edit's
shifted-test balanced accuracy minus no edit's (same mode), is paired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pathosae.downstream.bags import Bags
from pathosae.downstream.config import DownstreamConfig
from pathosae.downstream.metrics import (
    Leakage,
    TileRows,
    interval_columns,
    site_leakage_report,
    task_metric_replicates,
    task_metrics,
)
from pathosae.downstream.model import AdapterMIL
from pathosae.downstream.splits import Splits
from pathosae.downstream.train import predict_proba, train_downstream
from pathosae.edit.editor import Editor
from pathosae.edit.ops import EDIT_CHUNK_ROWS
from pathosae.edit.robustness import pooled_robustness
from pathosae.errors import PathosaeError, StageError
from pathosae.sae.conditional import ConditionedTopKSAE as ConditionedSAE
from pathosae.uncertainty import Resamples, patient_resamples, percentile_interval

if TYPE_CHECKING:
    from pathosae.config import UncertaintyConfig

SplitsEdit = Callable[[Splits], Splits]
Predict = Callable[[AdapterMIL, Bags], np.ndarray]
MODES = ("applied", "retrained")


@dataclass
class Candidate:
    """An edit or baseline: a function editing every split, or a reason it is missing."""

    name: str
    kind: str  # "edit", "baseline" or "random"
    edit: SplitsEdit | None
    n_units: int | None = None
    draw: int | None = None
    missing_reason: str | None = None


def editor_candidate(
    name: str, kind: str, editor: Editor, metadata_of: Callable[[Splits], Mapping[str, np.ndarray]],
    draw: int | None = None,
) -> Candidate:
    """Fit ``editor`` on the training tiles, then apply it to every split."""

    def edit(splits: Splits) -> Splits:
        train = editor.fit_transform(splits.train.x, metadata_of(splits)).float()
        return Splits(splits.train.with_x(train), *(b.with_x(editor.transform(b.x).float())
                                                    for b in (splits.normal, splits.shifted)))

    n_units = editor.spec.n_units() if editor.spec.needs_sae else None
    return Candidate(name, kind, edit, n_units, draw)


def combat_candidate(site_column: str = "site", fit_max_rows: int | None = None) -> Candidate:
    """ComBat on tile embeddings, fitted on (at most ``fit_max_rows``) training tiles with the
    label protected; each split harmonised into its own matrix (no concatenated copy)."""
    from pathosae.confounders.baselines import combat_train_apply_parts

    def edit(splits: Splits) -> Splits:
        parts = [splits.train, splits.normal, splits.shifted]
        batch = np.concatenate([p.tile_site() for p in parts])
        label = np.concatenate([p.tile_y().numpy() for p in parts])
        is_train = np.zeros(len(batch), dtype=bool)
        is_train[: splits.train.x.shape[0]] = True
        outs = combat_train_apply_parts([p.x.numpy() for p in parts], batch, is_train,
                                        protect=label, fit_max_rows=fit_max_rows)
        return Splits(*(p.with_x(torch.from_numpy(o.astype(np.float32, copy=False)))
                        for p, o in zip(parts, outs, strict=True)))

    del site_column
    return Candidate("combat", "baseline", edit)


def tile_level_codes(bags: Bags, sae: ConditionedSAE, site_column: str) -> Tensor:
    """Every tile's confounder level codes in the SAE's vocabulary (its slide's levels)."""
    tiles = pd.DataFrame({site_column: bags.tile_site(),
                          **{k: v[bags.slide.numpy()] for k, v in bags.meta.items()}})
    return torch.as_tensor(sae.level_codes(tiles))


def confounder_aware_candidate(name: str, sae: ConditionedSAE, site_column: str,
                               units: list[int] | None = None) -> Candidate:
    """A confounder-aware SAE's own edit (``topk_offsets``: each tile's offsets replaced by the
    mean offset; ``topk_reserved``: the reserved block ablated; ``topk_offsets_reserved``: both)
    on every split. Each tile is
    encoded with its slide's levels and keeps the SAE's error: x − x̂(x, levels) + x̂_edit.
    ``units`` are also zeroed in the edited codes (the decoder is affine, so that takes
    ``z[:, units] @ W_dec[units]`` off): with the offsets taking a confounder's dense shift, its
    flagged units are the sparse confounder atoms left in the dictionary."""
    index = torch.as_tensor(units or [], dtype=torch.long)

    @torch.no_grad()
    def edit_rows(x: Tensor, codes: Tensor) -> Tensor:
        own = sae(x, codes)[1]
        z, edited = sae.edit(x, codes)
        if len(index):
            edited = edited - z[:, index] @ sae.W_dec[index]
        return (x - own + edited).float()

    def edit_bags(bags: Bags) -> Bags:
        codes = tile_level_codes(bags, sae, site_column)
        out = torch.empty_like(bags.x)  # filled chunk by chunk: no list of parts to concatenate
        for start in range(0, bags.x.shape[0], EDIT_CHUNK_ROWS):
            stop = start + EDIT_CHUNK_ROWS
            out[start:stop] = edit_rows(bags.x[start:stop], codes[start:stop])
        return bags.with_x(out)

    def edit(splits: Splits) -> Splits:
        return Splits(*(edit_bags(b) for b in (splits.train, splits.normal, splits.shifted)))

    return Candidate(name, "edit", edit)


def replacement_candidate(name: str, replacement: Splits) -> Candidate:
    """A baseline whose embeddings come from elsewhere for the same tiles (e.g. features of
    stain-normalised tiles): every split's embeddings are swapped for the replacement's."""

    def edit(splits: Splits) -> Splits:
        parts = (splits.train, splits.normal, splits.shifted)
        others = (replacement.train, replacement.normal, replacement.shifted)
        for part, other in zip(parts, others, strict=True):
            if not np.array_equal(part.slide_ids, other.slide_ids) or part.x.shape != other.x.shape:
                raise StageError(
                    f"{name}: the replacement features do not cover the same slides and tiles. "
                    "Fix: re-run the embed stage so every slide has them."
                )
        return Splits(*(p.with_x(o.x) for p, o in zip(parts, others, strict=True)))

    return Candidate(name, "baseline", edit)


def missing_candidate(name: str, reason: str) -> Candidate:
    return Candidate(name, "baseline", None, missing_reason=reason)


def effect_table(  # noqa: PLR0913 - the table's inputs and its optional measurements
    splits: Splits,
    candidates: list[Candidate],
    cfg: DownstreamConfig,
    seed: int,
    base_model: AdapterMIL | None = None,
    modes: tuple[str, ...] = MODES,
    leakage_folds: int = 5,
    predict: Predict = predict_proba,
    robustness: bool = True,
    *,
    uncertainty: UncertaintyConfig | None = None,
    retrain_max_draws: int | None = None,
) -> pd.DataFrame:
    """Evaluate every candidate in every mode; ``no_edit`` rows come first.

    ``robustness`` adds croma's ``ri``, ``mari``, ``croma``, ``croma_support`` and
    ``croma_reason`` of the edited pooled test tiles (:mod:`pathosae.edit.robustness`).

    ``predict(model, bags)`` gives slide probabilities from the bags' rows; the default reads
    tile embeddings. Adapter-layer edits pass one that reads adapter activations (the bags
    then hold ``h``, and only the ``applied`` mode has a meaning).

    ``uncertainty`` (the config's section) sets the patient-level bootstrap intervals; None
    leaves their columns NaN. ``retrain_max_draws`` caps the random draws that are retrained
    (the rest get a missing retrained row saying so). Each row's ``seconds`` is its cost: the
    edit and its leakage probes (shared by the modes) plus its own retraining and scoring.
    """
    base_model = base_model or train_downstream(splits.train, cfg, seed)
    no_edit = Candidate("no_edit", "baseline", lambda s: s)
    boot = _Boot.of(splits, uncertainty)
    rows: list[dict[str, object]] = []
    reference_bacc: dict[str, float] = {}
    reference_pred: dict[str, np.ndarray] = {}
    reference_shifted: dict[str, np.ndarray] = {}
    for cand in [no_edit, *candidates]:
        if cand.edit is None:
            rows += [_missing_row(cand, mode) for mode in modes]
            continue
        started = time.perf_counter()
        try:
            edited = _finite_edit(cand, splits)
        except (PathosaeError, ValueError, np.linalg.LinAlgError) as exc:
            # A baseline that cannot apply to this cohort (e.g. ComBat with a site absent from
            # training) is reported as missing with its reason instead of stopping the table.
            reason = f"{type(exc).__name__}: {exc}"
            missing = Candidate(cand.name, cand.kind, None, cand.n_units, cand.draw, reason)
            rows += [_missing_row(missing, mode) for mode in modes]
            continue
        leak = pooled_leakage(edited, leakage_folds, seed)
        croma = pooled_robustness(edited, seed) if robustness else {}
        shared = (time.perf_counter() - started) / len(modes)
        for mode in modes:
            if _retrain_capped(cand, mode, retrain_max_draws):
                rows.append(_missing_row(replace(cand, missing_reason=(
                    f"draw not retrained (edit.retrain_max_draws={retrain_max_draws})")), mode))
                continue
            started = time.perf_counter()
            model = base_model if mode == "applied" else (
                base_model if cand is no_edit else train_downstream(edited.train, cfg, seed)
            )
            row, pred, bacc_normal, shifted = _score(cand, mode, model, edited, leak, predict, boot)
            if cand is no_edit:
                reference_bacc[mode], reference_pred[mode] = bacc_normal, pred
                reference_shifted[mode] = shifted
            row["flip_rate"] = float(np.mean(pred != reference_pred[mode]))
            row["collateral_bacc_drop"] = reference_bacc[mode] - bacc_normal
            row["delta_bacc_shifted_low"], row["delta_bacc_shifted_high"] = percentile_interval(
                shifted - reference_shifted[mode], boot.level)
            row.update(croma)
            row["seconds"] = round(shared + time.perf_counter() - started, 3)
            rows.append(row)
        del edited  # before the next candidate edits: one edited copy of the splits at a time
    return pd.DataFrame(rows)


def _retrain_capped(cand: Candidate, mode: str, cap: int | None) -> bool:
    return (mode == "retrained" and cap is not None and cand.kind == "random"
            and cand.draw is not None and cand.draw >= cap)


def _finite_edit(cand: Candidate, splits: Splits) -> Splits:
    """The candidate's edited splits, checked (a failed check leaves no copy behind)."""
    assert cand.edit is not None
    edited = cand.edit(splits)
    _require_finite(cand.name, edited)
    return edited


def _require_finite(name: str, edited: Splits) -> None:
    for part, bags in zip(("train", "normal", "shifted"), (edited.train, edited.normal, edited.shifted),
                          strict=True):
        # Row blocks: torch.isfinite on the whole matrix made a full-size temporary (|x|).
        if not all(bool(torch.isfinite(bags.x[i : i + EDIT_CHUNK_ROWS]).all())
                   for i in range(0, bags.x.shape[0], EDIT_CHUNK_ROWS)):
            raise StageError(
                f"{name} left NaN or inf in the {part} embeddings (e.g. ComBat with a site that "
                "has a single training sample). Fix: add slides to that site or drop the baseline."
            )


def pooled_leakage(splits: Splits, folds: int, seed: int) -> Leakage:
    """Site leakage of the pooled test slides' vectors (slide means of the rows), with the
    tile-level fallback on the same rows for small cohorts."""
    pooled = splits.pooled_test_index()  # the tiles are concatenated only if the fallback runs
    means = torch.cat([splits.normal.slide_means(), splits.shifted.slide_means()])
    return site_leakage_report(
        means.numpy(), pooled.site, pooled.y.numpy(), folds, seed,
        tiles=TileRows(lambda: splits.pooled_test().x.numpy(), pooled.slide.numpy()),
    )


@dataclass(frozen=True)
class _Boot:
    """The patient draws of the normal and the shifted test, shared by every row."""

    normal: Resamples
    shifted: Resamples
    level: float

    @classmethod
    def of(cls, splits: Splits, settings: UncertaintyConfig | None) -> _Boot:
        n_boot = 0 if settings is None else settings.n_bootstrap
        seed = 0 if settings is None else settings.seed
        level = 0.95 if settings is None else settings.level
        return cls(patient_resamples(splits.normal.patient, n_boot, [seed, 0]),
                   patient_resamples(splits.shifted.patient, n_boot, [seed, 1]), level)


class _Score(NamedTuple):
    row: dict[str, object]
    pred: np.ndarray  # predicted class of every normal, then shifted test slide
    bacc_normal: float
    bacc_shifted: np.ndarray  # shifted-test balanced accuracy of every bootstrap replicate


def _score(
    cand: Candidate, mode: str, model: AdapterMIL, edited: Splits, leak: Leakage, predict: Predict,
    boot: _Boot,
) -> _Score:
    row: dict[str, object] = {
        "edit": cand.name, "kind": cand.kind, "mode": mode, "n_units": cand.n_units,
        "draw": cand.draw, "missing_reason": None, **leak.columns(),
    }
    preds = []
    bacc_normal = float("nan")
    replicates: dict[str, np.ndarray] = {}
    for name, bags, res in (("normal", edited.normal, boot.normal),
                            ("shifted", edited.shifted, boot.shifted)):
        proba = predict(model, bags)
        m = task_metrics(bags.y.numpy(), proba, bags.site)
        row.update({
            f"auroc_{name}": m["auroc"], f"bacc_{name}": m["bacc"],
            f"worst_site_bacc_{name}": m["worst_site_bacc"],
            f"per_site_bacc_{name}": json.dumps(m["per_site_bacc"], sort_keys=True),
        })
        replicates = task_metric_replicates(res, bags.y.numpy(), proba, bags.site)
        row.update(interval_columns(replicates, boot.level, f"_{name}"))
        preds.append(proba.argmax(1))
        if name == "normal":
            bacc_normal = m["bacc"]
    return _Score(row, np.concatenate(preds), bacc_normal, replicates["bacc"])


def _missing_row(cand: Candidate, mode: str) -> dict[str, object]:
    return {"edit": cand.name, "kind": cand.kind, "mode": mode, "n_units": cand.n_units,
            "draw": cand.draw, "missing_reason": cand.missing_reason}
