"""The stage registry behind ``pathosae run``: each stage reads only earlier stages' files.

A stage is a function ``run_stage(run: RunDir, cfg: PathosaeConfig, on_error: OnError) -> dict``
returning a small JSON-able summary that is stored in ``run.json``. Stages skip work that is
already finished (per slide for tiling and embedding), so rerunning a stage is cheap.

:func:`run_stages` is the one execution path: ``pathosae run`` and every single-stage command go
through it, so the executor (local or Slurm) and the run.json bookkeeping are the same for both.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pathosae.config import PathosaeConfig
from pathosae.errors import PathosaeError
from pathosae.memory import map_large_blocks
from pathosae.run import RunDir
from pathosae.types import OnError

StageFn = Callable[[RunDir, PathosaeConfig, OnError], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", imported lazily so `pathosae --help` stays fast
    description: str
    per_slide: bool = False  # runs as an array job over slide shards on a cluster
    on_cluster: bool = True  # False: always runs in the calling process (cheap bookkeeping)
    # Large blocks from their own mappings (``pathosae.memory``): for stages whose peak is chunk
    # loops over cohort-sized copies. It costs page faults on every large allocation (1.5-2x the
    # time of torch-heavy stages such as SAE training and embedding), so it is off elsewhere.
    map_large_blocks: bool = False

    def load(self) -> StageFn:
        module_name, func_name = self.target.split(":")
        return getattr(importlib.import_module(module_name), func_name)


STAGES: tuple[Stage, ...] = (
    Stage("cohort", "pathosae.cohort.stage:run_stage", "validate the manifest, resolve paths, split",
          on_cluster=False),
    Stage("tile", "pathosae.tiling.stage:run_stage", "detect tissue and tile each slide", per_slide=True),
    # Per-slide stages are called with ``slide_ids`` (one shard of an array job) on a cluster.
    Stage("embed", "pathosae.embedding.stage:run_stage", "embed the tiles with the encoder",
          per_slide=True),
    Stage("sae", "pathosae.sae.stage:run_stage", "train and evaluate sparse autoencoders"),
    Stage("confounders", "pathosae.confounders.stage:run_stage",
          "associate SAE units with metadata; leakage, PathoROB, directions"),
    Stage("edit", "pathosae.edit.stage:run_stage",
          "edit confounders out and measure the effects against baselines", map_large_blocks=True),
    Stage("sharpen", "pathosae.saeception.stage:run_stage",
          "SAE-ception with confounder directions injected, and its controls",
          map_large_blocks=True),
    Stage("report", "pathosae.report.stage:run_stage", "write the self-contained report.html",
          on_cluster=False),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def select_stages(
    stages: list[str] | None = None, start: str | None = None, until: str | None = None
) -> list[Stage]:
    """Pick stages by name list or by a from/until range, in pipeline order."""
    for name in [*(stages or []), start, until]:
        if name is not None and name not in STAGE_NAMES:
            raise PathosaeError(
                f"unknown stage {name!r}. Fix: use one of {', '.join(STAGE_NAMES)}."
            )
    if start is not None and until is not None and (
        STAGE_NAMES.index(start) > STAGE_NAMES.index(until)
    ):
        raise PathosaeError(
            f"--from {start} comes after --until {until} (stage order: {', '.join(STAGE_NAMES)}). "
            "Fix: swap them, or name an earlier --from."
        )
    first = STAGE_NAMES.index(start) if start is not None else 0
    last = STAGE_NAMES.index(until) if until is not None else len(STAGES) - 1
    chosen = [
        s for i, s in enumerate(STAGES) if first <= i <= last and (not stages or s.name in stages)
    ]
    if not chosen:
        raise PathosaeError(
            f"--stages {','.join(stages or [])} with --from {start} / --until {until} selects no "
            "stage. Fix: make the range overlap the listed stages."
        )
    return chosen


def run_stages(
    run: RunDir,
    cfg: PathosaeConfig,
    stages: list[Stage],
    on_error: OnError = "stop",
    echo: Callable[[str], None] = print,
    stage_kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the chosen stages in order, recording status and duration of each in run.json.

    ``stage_kwargs`` maps a stage name to extra keyword arguments of its ``run_stage`` (e.g.
    ``{"edit": {"extra_specs": [...]}}``); they reach the stage on every executor.
    """
    summaries: dict[str, dict[str, Any]] = {}
    for stage in stages:
        fn = stage.load()
        kwargs = (stage_kwargs or {}).get(stage.name)
        if kwargs:
            # A partial of a module-level function pickles, so it travels to Slurm jobs too.
            fn = functools.partial(fn, **kwargs)
        echo(f"[{stage.name}] {stage.description}")
        run.set_stage(stage.name, status="running", started=time.time())
        t0 = time.perf_counter()
        try:
            summary = _execute(stage, fn, run, cfg, on_error)
        except BaseException as exc:
            run.set_stage(stage.name, status="failed", error=str(exc)[:2000])
            raise
        duration = round(time.perf_counter() - t0, 3)
        run.set_stage(stage.name, status="done", duration_s=duration, summary=summary)
        summaries[stage.name] = summary
        echo(f"[{stage.name}] done in {duration:.1f}s: {summary}")
    return summaries


def _execute(
    stage: Stage, fn: StageFn, run: RunDir, cfg: PathosaeConfig, on_error: OnError
) -> dict[str, Any]:
    """In this process, or as Slurm jobs (array jobs for per-slide stages) through submitit."""
    if cfg.executor.kind == "local" or not stage.on_cluster:
        if stage.map_large_blocks:
            map_large_blocks()  # chunk-sized temporaries go back to the system when freed
        return fn(run, cfg, on_error)
    from pathosae.scaleout import run_stage_on_executor

    return run_stage_on_executor(fn, stage.name, run, cfg, on_error, per_slide=stage.per_slide,
                                 map_blocks=stage.map_large_blocks)
