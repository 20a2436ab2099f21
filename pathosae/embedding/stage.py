"""The embedding stage: tiles of every slide -> RUN/features/<name>/<slide_id>.h5.

Slides whose feature file is complete (same settings hash, same coordinates as the tile file) are
skipped, so a killed run resumes where it stopped; damaged or stale files are recomputed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import pathosae
from pathosae.config import EmbeddingConfig, PathosaeConfig
from pathosae.embedding.dataset import (
    PixelTransform,
    SlideTiles,
    TileBatchDataset,
    plan_batches,
    worker_init,
)
from pathosae.embedding.device import (
    InferencePlan,
    forward_batch,
    plan_inference,
    prepare_model,
)
from pathosae.embedding.h5files import feature_file_state, write_feature_file
from pathosae.embedding.stain import HEStainNormaliser
from pathosae.encoders import Encoder, build_encoder, get_spec
from pathosae.encoders.loading import describe_encoder, weights_digest
from pathosae.encoders.registry import EncoderSpec
from pathosae.errors import PathosaeError, SlideError
from pathosae.io import settings_hash
from pathosae.run import RunDir, package_versions
from pathosae.schema import SETTINGS_HASH, SLIDE_ID
from pathosae.slides import open_slide
from pathosae.tiling.reader import TileGeometry, load_tiles
from pathosae.types import OnError


@dataclass
class SlideJob:
    """A slide to embed and the metadata its file will carry."""

    tiles: SlideTiles
    settings_hash: str
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)
    received: int = 0


@dataclass(frozen=True)
class FeatureSet:
    """One folder of features the stage writes: the main set or a baseline beside it.

    A baseline is the same job set with other weights (the seeded random-weights twin) or a pixel
    transform before the model's own (stain normalisation); the loop that embeds them is shared.
    """

    name: str
    random_weights: bool
    pixel_transform: HEStainNormaliser | None = None
    role: str = "main"


def feature_sets(emb: EmbeddingConfig) -> list[FeatureSet]:
    """The main features, then the configured baselines (a baseline equal to the main is dropped)."""
    sets = [FeatureSet(emb.features_name(), emb.random_weights)]
    if "random_weights" in emb.baselines and not emb.random_weights:
        sets.append(FeatureSet(emb.random_twin_name(), True, role="random_weights"))
    if "stain_normalised" in emb.baselines:
        sets.append(FeatureSet(emb.stainnorm_name(), emb.random_weights, HEStainNormaliser(),
                               role="stain_normalised"))
    return sets


@dataclass
class PlannedSet:
    """A feature set's pending work after checking which slides are already done."""

    features: FeatureSet
    settings: dict[str, Any]
    digest: str
    jobs: list[SlideJob] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, slide_ids: list[str] | None = None
) -> dict[str, Any]:
    """Pipeline entry (``pathosae embed`` / ``pathosae run``); returns a JSON-able summary.

    ``slide_ids`` restricts the work to one shard of the cohort (a Slurm array task). Every slide
    is checked for every feature set before any work, so a bad slide stops the run at once.
    """
    from pathosae.cohort.table import load_cohort

    emb = cfg.embedding
    cohort = load_cohort(run)
    if slide_ids is not None:
        cohort = cohort[cohort[SLIDE_ID].isin(slide_ids)]
    spec = get_spec(emb.encoder)
    plan = plan_inference(emb, spec)
    planned = [
        _plan_set(run, fs, cohort, spec, plan, cfg, on_error) for fs in feature_sets(emb)
    ]
    results = {p.features.role: _embed_set(run, p, plan, cfg, on_error) for p in planned}
    main = results.pop("main")
    summary: dict[str, Any] = {
        "features": planned[0].features.name,
        "encoder": spec.name,
        "dim": spec.dim,
        "random_weights": emb.random_weights,
        "device": str(plan.device),
        "precision": plan.precision,
        "slides": len(cohort),
        **main,
    }
    if results:
        summary["baselines"] = results
        summary["baseline_seconds"] = round(sum(r["seconds"] for r in results.values()), 2)
    return summary


def _plan_set(
    run: RunDir, fs: FeatureSet, cohort: pd.DataFrame, spec: EncoderSpec, plan: InferencePlan,
    cfg: PathosaeConfig, on_error: OnError,
) -> PlannedSet:
    emb = cfg.embedding
    digest = weights_digest(spec, emb.weights, fs.random_weights, cfg.seed)
    settings = embedding_settings(
        describe_encoder(spec, spec.dim, digest, fs.random_weights), plan, emb.features_dtype
    )
    if fs.pixel_transform is not None:
        settings["pixel_transform"] = fs.pixel_transform.describe()
    planned = PlannedSet(fs, settings, digest)
    for row in cohort.itertuples(index=False):
        slide_id, path = str(row.slide_id), str(row.path)
        try:
            job = _prepare_job(run, fs.name, slide_id, path, settings, spec.dim)
        except PathosaeError as exc:
            if on_error == "stop":
                raise
            planned.failed[slide_id] = str(exc)
            continue
        if job is None:
            planned.skipped.append(slide_id)
        else:
            planned.jobs.append(job)
    return planned


def _embed_set(
    run: RunDir, planned: PlannedSet, plan: InferencePlan, cfg: PathosaeConfig, on_error: OnError,
) -> dict[str, Any]:
    """Embed one feature set's pending slides; its part of the stage summary."""
    emb, fs = cfg.embedding, planned.features
    n_tiles, elapsed, fallbacks = 0, 0.0, 0
    run_failed: dict[str, str] = {}
    if planned.jobs:  # a finished run is checked without building (or loading) the model
        encoder = build_encoder(emb.encoder, emb.weights, random_weights=fs.random_weights,
                                seed=cfg.seed, known_sha256=planned.digest)
        t0 = time.perf_counter()
        n_tiles, run_failed, fallbacks = embed_jobs(
            planned.jobs, encoder, plan, FeatureTarget(run, fs.name, planned.settings),
            emb.batch_size, emb.num_workers, on_error, pixel_transform=fs.pixel_transform,
        )
        elapsed = time.perf_counter() - t0
    failed = {**planned.failed, **run_failed}
    out: dict[str, Any] = {
        "embedded": len(planned.jobs) - len(run_failed),
        "skipped_done": len(planned.skipped),
        "failed": failed,
        "tiles": n_tiles,
        "tiles_per_s": round(n_tiles / elapsed, 2) if elapsed > 0 and n_tiles else 0.0,
        "seconds": round(elapsed, 2),
    }
    if fs.role != "main":
        out = {"features": fs.name, **out}
    if fs.pixel_transform is not None:
        out["normaliser_fallback_tiles"] = fallbacks
    return out


def embedding_settings(
    described: dict[str, Any], plan: InferencePlan, features_dtype: str
) -> dict[str, Any]:
    """Everything that changes the numbers (not batch size, workers or device index)."""
    return {
        **described,
        "precision": plan.precision,
        "dtype": features_dtype,
    }


def _prepare_job(
    run: RunDir, name: str, slide_id: str, path: str, base: dict[str, Any], dim: int
) -> SlideJob | None:
    """None when the slide's feature file is already complete; else the work to do."""
    coords, geom = load_tiles(run, slide_id)
    digest = settings_hash({"embedding": base, "tiles": geom.settings_hash})
    state = feature_file_state(run.features_path(name, slide_id), digest, coords, dim)
    if state in ("done", "imported"):
        return None
    if len(coords):
        # Fail before any work on a slide that cannot be opened (missing or corrupt file).
        open_slide(path, slide_id).close()
    return SlideJob(SlideTiles(slide_id, path, coords, geom), digest)


@dataclass(frozen=True)
class FeatureTarget:
    """Where a feature set's files go and the settings each file records."""

    run: RunDir
    name: str
    base: dict[str, Any]

    def write(self, job: SlideJob, features: np.ndarray) -> None:
        _write(job, features, self.run, self.name, self.base)


def embed_jobs(
    jobs: list[SlideJob],
    encoder: Encoder,
    plan: InferencePlan,
    target: FeatureTarget,
    batch_size: int,
    num_workers: int,
    on_error: OnError,
    pixel_transform: PixelTransform | None = None,
) -> tuple[int, dict[str, str], int]:
    """Embed every job's tiles and write one file per slide.

    Returns (tiles done, failures, tiles the pixel transform left unchanged).
    """
    failed: dict[str, str] = {}
    for job in jobs:
        if len(job.tiles.coords) == 0:
            target.write(job, np.zeros((0, encoder.dim), np.float32))
    jobs = [j for j in jobs if len(j.tiles.coords)]
    if not jobs:
        return 0, failed, 0

    model = prepare_model(encoder, plan)
    dataset = TileBatchDataset([j.tiles for j in jobs], pixel_transform)
    fallbacks = 0
    loader = make_loader(dataset, plan_batches(dataset.slides, batch_size), num_workers, plan)
    total = sum(len(j.tiles.coords) for j in jobs)
    done_tiles = done_slides = 0
    bar = tqdm(total=total, unit="tile", desc=f"embed {target.name}", smoothing=0.1, mininterval=1.0)
    try:
        for batch in loader:
            job = jobs[batch["slide"]]
            sid = job.tiles.slide_id
            if sid in failed:
                continue
            if batch["error"]:
                error = SlideError(sid, job.tiles.path, f"reading tiles failed ({batch['error']})",
                                   "check the slide file, or rerun with --on-error skip")
                if on_error == "stop":
                    raise error
                failed[sid] = str(error)
                bar.write(f"skipping slide {sid!r}: {error}")
                continue
            fallbacks += int(batch["fallbacks"])
            job.parts.append((batch["start"], forward_batch(model, batch["tiles"], plan)))
            job.received += batch["stop"] - batch["start"]
            bar.update(batch["stop"] - batch["start"])
            if job.received == len(job.tiles.coords):
                target.write(job, np.concatenate([p for _, p in sorted(job.parts, key=lambda t: t[0])]))
                job.parts.clear()
                done_tiles += job.received
                done_slides += 1
                bar.set_postfix_str(f"slides {done_slides}/{len(jobs)}", refresh=False)
    finally:
        bar.close()
        dataset.close()
    return done_tiles, failed, fallbacks


def make_loader(
    dataset: TileBatchDataset, keys: list[Any], num_workers: int, plan: InferencePlan
) -> DataLoader:
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"worker_init_fn": worker_init, "prefetch_factor": 4, "persistent_workers": False}
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=keys,
        num_workers=num_workers,
        pin_memory=plan.device.type == "cuda",
        **extra,
    )


def _write(job: SlideJob, features: np.ndarray, run: RunDir, name: str, base: dict[str, Any]) -> None:
    geom: TileGeometry = job.tiles.geometry
    attrs = {
        **base,
        SLIDE_ID: job.tiles.slide_id,
        "target_mpp": geom.target_mpp,
        "tile_px": geom.tile_px,
        "tiles_settings_hash": geom.settings_hash,
        SETTINGS_HASH: job.settings_hash,
        "pathosae_version": pathosae.__version__,
        "versions": json.dumps(package_versions(), sort_keys=True),
    }
    coords_attrs = {
        "patch_size": geom.tile_px,
        "patch_size_level0": round(geom.tile_size_level0),
        "target_mpp": geom.target_mpp,
        "source_mpp": geom.source_mpp,
    }
    write_feature_file(
        run.features_path(name, job.tiles.slide_id),
        features.astype(base["dtype"], copy=False),
        job.tiles.coords,
        attrs,
        coords_attrs,
    )
