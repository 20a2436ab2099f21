"""One streaming pass over a run's slides: per-slide summaries of SAE codes and a tile sample.

What the confounder analysis keeps of the features is slide-level (code summaries, embedding and
residual means: one row per slide) plus a capped, seeded sample of tiles per slide. A slide is
encoded and summarised a chunk of tiles at a time, so beyond the slide's features memory does not
grow with its tiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from pathosae.config import PathosaeConfig
from pathosae.confounders.aggregate import RunningSum, TileSummaries
from pathosae.errors import PathosaeError, StageError
from pathosae.progress import bar
from pathosae.schema import SLIDE_ID
from pathosae.types import OnError

_ENCODE_BATCH = 4096


class SlideFeatures(Protocol):
    """What the stage needs from a feature store (``pathosae.features.FeatureStore`` has it)."""

    slide_ids: list[str]

    def load(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]: ...


class CodeModel(Protocol):
    """What the stage needs from an SAE."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Collected:
    """Everything one pass over the slides keeps: slide summaries and a capped tile sample."""

    slides: pd.DataFrame
    codes: dict[str, np.ndarray]  # aggregation -> slides × units
    embedding_mean: np.ndarray  # slides × dims
    residual_mean: np.ndarray  # slides × dims (features − SAE reconstruction)
    n_tiles: np.ndarray
    tile_features: np.ndarray  # sampled tiles × dims
    tile_slide: np.ndarray  # slide index of each sampled tile
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Baseline:
    """A feature set embedded beside the main one, and the SAE that encodes it (if any)."""

    features: str
    store: SlideFeatures
    sae: CodeModel | None = None


class Identity:
    """Codes = the features themselves, for a baseline that has no SAE of its own."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def collect_baselines(
    baselines: Mapping[str, Baseline], data: Collected, cfg: PathosaeConfig
) -> tuple[dict[str, Collected], dict[str, dict[str, str]]]:
    """The same pass over the same slides (and the same sampled tiles) for each baseline.

    A baseline that lacks a slide, or whose tiles differ from the main features', is left out
    with the reason (its figures would not be comparable).
    """
    out, skipped = {}, {}
    for role, baseline in baselines.items():
        try:
            got = collect(baseline.store, baseline.sae or Identity(), data.slides, cfg, "skip",
                          desc=f"confounders: slides ({role} baseline)")
        except PathosaeError as exc:
            skipped[role] = {"features": baseline.features, "status": "skipped", "reason": str(exc)}
            continue
        same = (len(got.slides) == len(data.slides) and np.array_equal(got.n_tiles, data.n_tiles)
                and np.array_equal(got.tile_slide, data.tile_slide))
        if not same:
            skipped[role] = {"features": baseline.features, "status": "skipped",
                             "reason": "its slides or tiles differ from the main features; "
                                       "rerun `pathosae embed`"}
            continue
        out[role] = got
    return out, skipped


def baseline_representations(
    extra: Mapping[str, Collected], baselines: Mapping[str, Baseline], level: str
) -> dict[str, np.ndarray]:
    """embedding_<role> for every baseline; sae_codes_<role> and sae_residual_<role> with an SAE
    (slide level). At tile level (PathoROB, and tile probes) only the embeddings."""
    reps: dict[str, np.ndarray] = {}
    for role, data in extra.items():
        sae = baselines[role].sae
        if level == "tile":  # PathoROB: the baseline embeddings (tile-level probes are costly)
            reps[f"embedding_{role}"] = data.tile_features
            continue
        found = representations(data, sae or Identity(), level)
        reps[f"embedding_{role}"] = found["embedding"]
        if sae is not None:
            reps[f"sae_codes_{role}"] = found["sae_codes"]
            reps[f"sae_residual_{role}"] = found["sae_residual"]
    return reps


def conditions_for(sae: CodeModel, frame: pd.DataFrame) -> np.ndarray | None:
    """Level codes of ``frame``'s rows for a confounder-aware SAE (None for the others)."""
    if not getattr(sae, "needs_conditions", False):
        return None
    return np.asarray(sae.level_codes(frame))  # type: ignore[attr-defined]


def codes_and_recon(
    sae: CodeModel, features: np.ndarray, conditions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes and reconstructions in batches, on the model's device (a GPU when it is there).

    ``conditions`` (rows × confounders level codes) for a confounder-aware SAE: its codes and
    reconstruction use each row's own offsets."""
    codes: np.ndarray | None = None
    recon: np.ndarray | None = None
    params = getattr(sae, "parameters", None)
    device = next(iter(params()), torch.empty(0)).device if callable(params) else None
    with torch.no_grad():
        # One batch even without rows, so that the outputs have the model's widths.
        for start in range(0, max(len(features), 1), _ENCODE_BATCH):
            x = torch.as_tensor(np.asarray(features[start:start + _ENCODE_BATCH], np.float32),
                                device=device)
            if conditions is None:
                z, x_hat = _encode_decode(sae, x)
            else:
                rows = torch.as_tensor(conditions[start:start + _ENCODE_BATCH], device=device)
                z = sae.encode(x, rows)  # type: ignore[call-arg]
                x_hat = sae.decode(z, rows)  # type: ignore[call-arg]
            z_rows, x_rows = z.cpu().numpy(), x_hat.cpu().numpy()
            if codes is None or recon is None:  # filled in place: no list of parts to join
                codes = np.empty((len(features), z_rows.shape[1]), dtype=z_rows.dtype)
                recon = np.empty((len(features), x_rows.shape[1]), dtype=x_rows.dtype)
            codes[start:start + len(z_rows)] = z_rows
            recon[start:start + len(x_rows)] = x_rows
    assert codes is not None and recon is not None  # the loop runs at least once
    return codes, recon


def _encode_decode(sae: CodeModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = sae.encode(x)
    return z, sae.decode(z)


def collect(
    store: SlideFeatures, sae: CodeModel, cohort: pd.DataFrame, cfg: PathosaeConfig,
    on_error: OnError, *, desc: str = "confounders: slides",
) -> Collected:
    """One pass over the slides: per-slide summaries and a capped, seeded tile sample (with a
    progress bar named ``desc``)."""
    ccfg = cfg.confounders
    available = set(store.slide_ids)
    missing = [s for s in cohort[SLIDE_ID].astype(str) if s not in available]
    if missing and on_error == "stop":
        raise StageError(
            f"{len(missing)} cohort slide(s) have no features, e.g. {missing[:3]}. Fix: run "
            "`pathosae embed` for them, or pass --on-error skip to leave them out."
        )
    slides = cohort[cohort[SLIDE_ID].astype(str).isin(available)].reset_index(drop=True)
    if len(slides) < 3:
        raise StageError(f"only {len(slides)} slide(s) have features; the scan needs at least 3.")
    per_slide = max(1, min(ccfg.confirm_tiles_per_slide, ccfg.max_tiles // len(slides)))
    rng = np.random.default_rng(ccfg.seed)
    sums: dict[str, list[np.ndarray]] = {a: [] for a in ccfg.aggregations}
    emb, res, counts, tile_x, tile_s = [], [], [], [], []
    for i, sid in enumerate(bar(slides[SLIDE_ID].astype(str), desc, len(slides), "slide")):
        features = np.asarray(store.load(sid)[0], dtype=np.float32)
        if features.ndim != 2 or len(features) == 0 or not np.isfinite(features).all():
            raise PathosaeError(
                f"features of slide {sid!r} are empty or hold NaN/inf (shape {features.shape}). "
                "Fix: re-embed that slide (`pathosae embed`)."
            )
        summary, residual = summarise_slide(sae, features, conditions_for(sae, slides.iloc[[i]]),
                                            cfg)
        for name, vec in summary.items():
            sums[name].append(vec.astype(np.float32))
        emb.append(features.mean(axis=0))
        res.append(residual)
        counts.append(len(features))
        pick = np.sort(rng.choice(len(features), min(per_slide, len(features)), replace=False))
        tile_x.append(features[pick])
        tile_s.append(np.full(len(pick), i))
    return Collected(slides, {k: np.vstack(v) for k, v in sums.items()}, np.vstack(emb),
                     np.vstack(res), np.asarray(counts), np.vstack(tile_x),
                     np.concatenate(tile_s), missing)


def summarise_slide(
    sae: CodeModel, features: np.ndarray, slide_codes: np.ndarray | None, cfg: PathosaeConfig,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A slide's code summaries and mean SAE residual, encoded ``_ENCODE_BATCH`` tiles at a time:
    no tiles × units matrix of the whole slide exists (20,000 tiles × 4,096 units held in float32
    and float64 made this stage's memory grow with the tiles per slide)."""
    ccfg = cfg.confounders
    summary: TileSummaries | None = None
    residual = RunningSum(np.float32)  # the old mean of the whole slide's float32 residual
    for start in range(0, len(features), _ENCODE_BATCH):
        chunk = features[start:start + _ENCODE_BATCH]
        codes, recon = codes_and_recon(
            sae, chunk, None if slide_codes is None else np.repeat(slide_codes, len(chunk), 0))
        if summary is None:
            summary = TileSummaries(codes.shape[1], ccfg.aggregations, ccfg.quantile,
                                    ccfg.active_threshold)
        summary.add(codes)
        residual.add(chunk - recon)
    if summary is None:
        raise PathosaeError("a slide without tiles has no summary. Fix: drop it from the cohort.")
    return summary.result(), residual.mean()


def representations(
    data: Collected, sae: CodeModel, level: str, rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Raw embeddings, SAE codes and SAE residual, per slide (means) or per sampled tile
    (``rows``: of those tiles only, e.g. a metric's draw, so that no codes of the others exist)."""
    if level == "slide":
        return {"embedding": data.embedding_mean, "sae_codes": data.codes["mean"]
                if "mean" in data.codes else next(iter(data.codes.values())),
                "sae_residual": data.residual_mean}
    tiles, meta = data.tile_features, metadata_for(data, "tile")
    if rows is not None:
        tiles, meta = tiles[rows], meta.iloc[rows]
    codes, recon = codes_and_recon(sae, tiles, conditions_for(sae, meta))
    return {"embedding": tiles, "sae_codes": codes, "sae_residual": tiles - recon}


def metadata_for(data: Collected, level: str) -> pd.DataFrame:
    if level == "slide":
        return data.slides
    return data.slides.iloc[data.tile_slide].reset_index(drop=True)


