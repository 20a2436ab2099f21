"""Pipeline stages on an executor: per-slide stages as array jobs over shards, others as one job.

A per-slide stage (tiling, embedding) accepts ``slide_ids`` to restrict its work to those slides:
``run_stage(run, cfg, on_error, slide_ids=None)``. Each array task runs it on one shard; the
stage's summary lists the shards' summaries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pathosae.memory import map_large_blocks
from pathosae.run import RunDir
from pathosae.scaleout.executor import run_sharded, run_single
from pathosae.scaleout.sharding import shard_for_array
from pathosae.schema import SLIDE_ID

if TYPE_CHECKING:  # pathosae.config imports this package for its executor section
    from pathosae.config import PathosaeConfig

StageFn = Callable[..., dict[str, Any]]


def run_stage_on_executor(
    stage_fn: StageFn,
    name: str,
    run: RunDir,
    cfg: PathosaeConfig,
    on_error: str,
    *,
    per_slide: bool,
    resume_command: str | None = None,
    map_blocks: bool = False,
) -> dict[str, Any]:
    """Run one pipeline stage where ``cfg.executor`` says; return its summary.

    ``stage_fn`` must be importable on the compute nodes (a stage's top-level ``run_stage``).
    ``map_blocks``: the job serves large blocks from their own mappings, as a local run of a
    stage with ``Stage.map_large_blocks`` does.
    """
    executor = cfg.executor
    if executor.kind == "local":
        return stage_fn(run, cfg, on_error)
    if not per_slide:
        return run_single(_stage_job, executor, run.root, name, stage_fn, str(run.root), cfg, on_error,
                          map_blocks, resume_command=resume_command)
    from pathosae.cohort.table import load_cohort

    slide_ids = [str(s) for s in load_cohort(run)[SLIDE_ID]]
    shards = shard_for_array(slide_ids, executor.slides_per_shard, executor.max_array_size)
    job = functools.partial(_shard_job, stage_fn, str(run.root), cfg, on_error)
    summaries = run_sharded(job, shards, executor, run.root, name, resume_command=resume_command)
    # Shard summaries are kept as they are: summing them key by key would be wrong for settings
    # (an encoder's dim) and right only for counts, which the stage alone can tell apart.
    return {"executor": "slurm", "slides": len(slide_ids), "shards": len(shards), "per_shard": summaries}


def _stage_job(
    stage_fn: StageFn, run_root: str, cfg: PathosaeConfig, on_error: str, map_blocks: bool,
) -> dict[str, Any]:
    if map_blocks:  # as in a local run: freed chunk-sized blocks leave the job's RSS
        map_large_blocks()
    return stage_fn(RunDir(Path(run_root)), cfg, on_error)


def _shard_job(
    stage_fn: StageFn, run_root: str, cfg: PathosaeConfig, on_error: str, slide_ids: list[str]
) -> dict[str, Any]:
    return stage_fn(RunDir(Path(run_root)), cfg, on_error, slide_ids=slide_ids)
