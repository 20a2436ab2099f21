"""The tiling stage over a cohort: one process per slide, finished slides skipped, failures listed."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pathosae.cohort.manifest import FEATURES_ONLY_FIX, slide_file_present
from pathosae.config import PathosaeConfig, TilingConfig
from pathosae.errors import SlideError, StageError
from pathosae.io import settings_hash, write_text_atomic
from pathosae.run import RunDir
from pathosae.schema import PATH, SLIDE_ID
from pathosae.tiling.slide import finished_tiles, slide_settings_hash, tile_slide
from pathosae.types import OnError

FAILED_CSV = "_failed.csv"


@dataclass(frozen=True)
class SlideJob:
    """Everything a worker needs for one slide (plain data, so it pickles under spawn)."""

    slide_id: str
    path: str
    mpp: float | None
    tiles_path: str
    qc_path: str
    tiling: dict[str, Any]


@dataclass(frozen=True)
class SlideOutcome:
    slide_id: str
    path: str
    status: str  # "done", "existing" or "failed"
    n_tiles: int = 0
    reason: str = ""
    fix: str = ""


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, slide_ids: list[str] | None = None
) -> dict[str, Any]:
    """Tile the run's cohort (or the shard ``slide_ids`` of it) into RUN/tiles/ and RUN/qc/."""
    from pathosae.cohort.table import load_cohort

    cohort = load_cohort(run)
    if slide_ids is not None:
        cohort = cohort[cohort[SLIDE_ID].isin(slide_ids)]
    return tile_cohort(run, cohort, cfg.tiling, on_error, shard=slide_ids is not None)


def tile_cohort(
    run: RunDir,
    cohort: pd.DataFrame,
    cfg: TilingConfig,
    on_error: OnError = "stop",
    shard: bool = False,
) -> dict[str, Any]:
    """Tile the slides of a cohort table (columns slide_id, path and optionally mpp).

    ``shard`` marks one of several concurrent jobs: its failure list gets a file of its own.
    Slides without a slide file (a features-only cohort) stop the stage before any work, or
    under ``skip`` are listed as failed.
    """
    _check_table(cohort)
    absent = _absent_slides(cohort)
    if absent and on_error == "stop":
        raise StageError(
            f"{len(absent)} slide(s) of the cohort have no slide file, and tiling reads pixels: "
            f"{'; '.join(f'{o.slide_id!r} ({o.reason})' for o in absent[:5])}"
            f"{f'; and {len(absent) - 5} more' if len(absent) > 5 else ''}. "
            f"Fix: {absent[0].fix}; or rerun with --on-error skip to tile the other slides."
        )
    present = cohort[~cohort[SLIDE_ID].astype(str).isin({o.slide_id for o in absent})]
    jobs, existing = _plan_jobs(run, present, cfg)
    outcomes = list(existing)
    failed: list[SlideOutcome] = list(absent)
    for outcome in _run_jobs(jobs, cfg.num_workers, stop_on_error=on_error == "stop"):
        outcomes.append(outcome)
        if outcome.status == "failed":
            failed.append(outcome)
    _write_failed_table(run, failed, list(cohort[SLIDE_ID]) if shard else None)
    if failed and on_error == "stop":
        first = failed[0]
        raise SlideError(first.slide_id, first.path, first.reason, _stop_fix(first.fix))
    done = [o for o in outcomes if o.status != "failed"]
    return {
        "n_slides": len(done),
        "n_tiles": int(sum(o.n_tiles for o in done)),
        "n_skipped_existing": len(existing),
        "failed": [{SLIDE_ID: o.slide_id, "path": o.path, "reason": o.reason} for o in failed],
    }


def _check_table(cohort: pd.DataFrame) -> None:
    missing = [c for c in (SLIDE_ID, PATH) if c not in cohort.columns]
    if missing:
        raise StageError(
            f"the cohort table lacks column(s) {', '.join(missing)}. "
            "Fix: rerun the cohort stage (`pathosae run`)."
        )


def _absent_slides(cohort: pd.DataFrame) -> list[SlideOutcome]:
    """A failed outcome for each slide whose file is not there (no path, or a missing file)."""
    absent = []
    for slide_id, path in zip(cohort[SLIDE_ID].astype(str), cohort[PATH], strict=True):
        if not slide_file_present(path):
            reason = f"file not found: {path}" if path else "the manifest gives no path"
            fix = f"correct the manifest's path, or {FEATURES_ONLY_FIX}" if path \
                else FEATURES_ONLY_FIX
            absent.append(SlideOutcome(slide_id, str(path or ""), "failed", reason=reason,
                                       fix=fix))
    return absent


def _plan_jobs(
    run: RunDir, cohort: pd.DataFrame, cfg: TilingConfig
) -> tuple[list[SlideJob], list[SlideOutcome]]:
    """Split the cohort into slides to tile and slides whose valid tiles already exist."""
    jobs, existing = [], []
    settings = cfg.model_dump(mode="json")
    for row in cohort.itertuples(index=False):
        slide_id, path = str(row.slide_id), str(row.path)
        mpp = _row_mpp(getattr(row, "mpp", None))
        tiles_path = run.tiles_path(slide_id)
        qc_path = run.qc_dir / f"{slide_id}.png"
        if Path(path).is_file() and qc_path.is_file():
            n_tiles = finished_tiles(tiles_path, slide_settings_hash(cfg, path, mpp))
            if n_tiles is not None:
                existing.append(SlideOutcome(slide_id, path, "existing", n_tiles))
                continue
        jobs.append(SlideJob(slide_id, path, mpp, str(tiles_path), str(qc_path), settings))
    return jobs, existing


def _run_jobs(jobs: list[SlideJob], workers: int, stop_on_error: bool) -> Iterator[SlideOutcome]:
    """Outcomes as slides finish; under stop, slides not yet started are cancelled on a failure."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            outcome = tile_job(job)
            yield outcome
            if outcome.status == "failed" and stop_on_error:
                return
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=_mp_context()) as pool:
        pending: set[Future[SlideOutcome]] = {pool.submit(tile_job, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            outcomes = [f.result() for f in done]
            yield from outcomes
            if stop_on_error and any(o.status == "failed" for o in outcomes):
                for future in pending:
                    future.cancel()
                # Slides already running finish (their writes are atomic); then stop.
                yield from (f.result() for f in pending if not f.cancelled())
                return


def tile_job(job: SlideJob) -> SlideOutcome:
    """Worker entry point: tile one slide; a bad slide becomes a 'failed' outcome, not a crash."""
    cfg = TilingConfig.model_validate(job.tiling)
    try:
        result = tile_slide(
            job.path, job.slide_id, cfg, manifest_mpp=job.mpp, tiles_path=job.tiles_path,
            qc_path=job.qc_path,
        )
    except SlideError as exc:
        return SlideOutcome(job.slide_id, job.path, "failed", reason=exc.reason, fix=exc.fix)
    return SlideOutcome(job.slide_id, job.path, "done", n_tiles=len(result.coords))


def _write_failed_table(
    run: RunDir, failed: list[SlideOutcome], shard_ids: list[str] | None = None
) -> None:
    """RUN/tiles/_failed.csv lists this pass's failures (removed when every slide succeeded).

    A shard writes _failed.<hash of its slide ids>.csv so concurrent shards never collide.
    """
    name = FAILED_CSV if shard_ids is None else f"_failed.{settings_hash(sorted(shard_ids), 10)}.csv"
    target = run.tiles_dir / name
    if not failed:
        target.unlink(missing_ok=True)
        return
    table = pd.DataFrame(
        [{SLIDE_ID: o.slide_id, "path": o.path, "reason": o.reason, "fix": o.fix} for o in failed]
    )
    write_text_atomic(target, table.to_csv(index=False))


def _stop_fix(fix: str) -> str:
    skip = "or rerun with --on-error skip to tile the other slides and list this one"
    return f"{fix}; {skip}" if fix else skip


def _row_mpp(value: object) -> float | None:
    try:
        mpp = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if mpp != mpp else mpp  # NaN means "not given"


def _mp_context() -> multiprocessing.context.BaseContext:
    """forkserver on Linux (safe with OpenSlide's threads, cheaper than spawn), else spawn."""
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["pathosae.tiling.slide"])
        return context
    return multiprocessing.get_context("spawn")
