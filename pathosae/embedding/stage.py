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
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import pathosae
from pathosae.config import PathosaeConfig
from pathosae.embedding.dataset import (
    SlideTiles,
    TileBatchDataset,
    plan_batches,
    worker_init,
)
from pathosae.embedding.device import InferencePlan, plan_inference
from pathosae.embedding.h5files import feature_file_state, write_feature_file
from pathosae.encoders import Encoder, build_encoder, get_spec
from pathosae.encoders.loading import describe_encoder, weights_digest
from pathosae.errors import PathosaeError, SlideError
from pathosae.io import settings_hash
from pathosae.run import RunDir, package_versions
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


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, slide_ids: list[str] | None = None
) -> dict[str, Any]:
    """Pipeline entry (``pathosae embed`` / ``pathosae run``); returns a JSON-able summary.

    ``slide_ids`` restricts the work to one shard of the cohort (a Slurm array task).
    """
    from pathosae.cohort import load_cohort

    emb = cfg.embedding
    cohort = load_cohort(run)
    if slide_ids is not None:
        cohort = cohort[cohort["slide_id"].isin(slide_ids)]
    spec = get_spec(emb.encoder)
    digest = weights_digest(spec, emb.weights, emb.random_weights, cfg.seed)
    plan = plan_inference(emb, spec)
    name = emb.features_name()
    base_settings = embedding_settings(
        describe_encoder(spec, spec.dim, digest, emb.random_weights), plan, emb.features_dtype
    )

    jobs, skipped, failed = [], [], {}
    for row in cohort.itertuples(index=False):
        slide_id, path = str(row.slide_id), str(row.path)
        try:
            job = _prepare_job(run, name, slide_id, path, base_settings, spec.dim)
        except PathosaeError as exc:
            if on_error == "stop":
                raise
            failed[slide_id] = str(exc)
            continue
        if job is None:
            skipped.append(slide_id)
        else:
            jobs.append(job)

    n_tiles, elapsed, run_failed = 0, 0.0, {}
    if jobs:  # a finished run is checked without building (or loading) the model
        encoder = build_encoder(emb.encoder, emb.weights, random_weights=emb.random_weights,
                                seed=cfg.seed, known_sha256=digest)
        t0 = time.perf_counter()
        n_tiles, run_failed = embed_jobs(
            jobs, encoder, plan, run, name, base_settings, emb.batch_size, emb.num_workers,
            on_error,
        )
        elapsed = time.perf_counter() - t0
    failed.update(run_failed)
    return {
        "features": name,
        "encoder": spec.name,
        "dim": spec.dim,
        "random_weights": emb.random_weights,
        "device": str(plan.device),
        "precision": plan.precision,
        "slides": len(cohort),
        "embedded": len(jobs) - len(run_failed),
        "skipped_done": len(skipped),
        "failed": failed,
        "tiles": n_tiles,
        "tiles_per_s": round(n_tiles / elapsed, 2) if elapsed > 0 and n_tiles else 0.0,
    }


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


def embed_jobs(
    jobs: list[SlideJob],
    encoder: Encoder,
    plan: InferencePlan,
    run: RunDir,
    name: str,
    base: dict[str, Any],
    batch_size: int,
    num_workers: int,
    on_error: OnError,
) -> tuple[int, dict[str, str]]:
    """Embed every job's tiles and write one file per slide; returns (tiles done, failures)."""
    failed: dict[str, str] = {}
    for job in jobs:
        if len(job.tiles.coords) == 0:
            _write(job, np.zeros((0, encoder.dim), np.float32), run, name, base)
    jobs = [j for j in jobs if len(j.tiles.coords)]
    if not jobs:
        return 0, failed

    model = prepare_model(encoder, plan)
    dataset = TileBatchDataset([j.tiles for j in jobs])
    loader = make_loader(dataset, plan_batches(dataset.slides, batch_size), num_workers, plan)
    total = sum(len(j.tiles.coords) for j in jobs)
    done_tiles = done_slides = 0
    bar = tqdm(total=total, unit="tile", desc=f"embed {name}", smoothing=0.1, mininterval=1.0)
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
            job.parts.append((batch["start"], forward_batch(model, batch["tiles"], plan)))
            job.received += batch["stop"] - batch["start"]
            bar.update(batch["stop"] - batch["start"])
            if job.received == len(job.tiles.coords):
                _write(job, np.concatenate([p for _, p in sorted(job.parts, key=lambda t: t[0])]),
                       run, name, base)
                job.parts.clear()
                done_tiles += job.received
                done_slides += 1
                bar.set_postfix_str(f"slides {done_slides}/{len(jobs)}", refresh=False)
    finally:
        bar.close()
        dataset.close()
    return done_tiles, failed


def prepare_model(encoder: Encoder, plan: InferencePlan) -> Encoder:
    model = encoder.to(plan.device).eval()
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


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


def forward_batch(model: Encoder, tiles: torch.Tensor, plan: InferencePlan) -> np.ndarray:
    """uint8 tiles -> float32 features on the host."""
    with torch.inference_mode():
        x = model.preprocess(tiles.to(plan.device, non_blocking=True))
        if plan.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with plan.autocast():
            y = model(x)
        return y.float().cpu().numpy()


def _write(job: SlideJob, features: np.ndarray, run: RunDir, name: str, base: dict[str, Any]) -> None:
    geom: TileGeometry = job.tiles.geometry
    attrs = {
        **base,
        "slide_id": job.tiles.slide_id,
        "target_mpp": geom.target_mpp,
        "tile_px": geom.tile_px,
        "tiles_settings_hash": geom.settings_hash,
        "settings_hash": job.settings_hash,
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
