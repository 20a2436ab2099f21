"""Starting or resuming a run: which manifest and config it uses, then its stages under a lock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathosae.config import PathosaeConfig, load_config
from pathosae.errors import ConfigError, PathosaeError
from pathosae.io import sha256_file
from pathosae.pipeline import Stage, run_stages, select_stages
from pathosae.run import RunDir
from pathosae.types import OnError


def prepare_run(
    manifest: Path | None, out: Path | None, config: Path | None, executor: str | None = None
) -> tuple[RunDir, PathosaeConfig]:
    """Resolve the run directory, manifest and config; record them in run.json.

    Resuming a run needs neither ``--manifest`` nor ``--config``: run.json has both.
    """
    if out is None:
        if manifest is None:
            raise PathosaeError("give --manifest for a new run, or --out RUN to resume one")
        out = Path("runs") / manifest.stem
    run = RunDir(out)
    state = run.read_state()
    if manifest is None:
        recorded = state.get("manifest")
        if not recorded:
            raise PathosaeError(
                f"{run.root} is not a started run (no manifest in run.json). "
                "Fix: pass --manifest cohort.csv."
            )
        manifest = Path(recorded)
    if not manifest.is_file():
        raise PathosaeError(f"manifest {manifest} does not exist. Fix: pass an existing CSV.")
    if config is None and "config" in state:
        cfg = PathosaeConfig.model_validate(state["config"])
    else:
        cfg = load_config(config)
    if executor is not None:
        # Recorded in run.json, so `pathosae run --out RUN` resumes on the same executor.
        cfg.executor.kind = executor  # type: ignore[assignment]
    # Under the lock: a second run on a directory in use fails here without rewriting run.json.
    with run.lock():
        run.init(cfg.model_dump(mode="json"), str(manifest.resolve()), sha256_file(manifest))
    return run, cfg


def run_pipeline(
    run: RunDir,
    cfg: PathosaeConfig,
    stages: list[str] | None = None,
    start: str | None = None,
    until: str | None = None,
    on_error: OnError = "stop",
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    chosen = select_stages(stages, start, until)
    preflight(cfg, chosen)
    with run.lock():
        return run_stages(run, cfg, chosen, on_error, echo)


def preflight(cfg: PathosaeConfig, chosen: list[Stage]) -> None:
    """Fail before any work on what a later stage would find only after earlier ones ran."""
    if any(stage.name == "embed" for stage in chosen):
        from pathosae.doctor import check_weights
        from pathosae.encoders.registry import get_spec

        get_spec(cfg.embedding.encoder)  # an unknown encoder names the known ones
        check = check_weights(cfg)
        if not check.ok:
            raise ConfigError(f"embedding.weights: {check.detail}. Fix: {check.fix}.")


def run_config(run: RunDir, config: Path | None) -> PathosaeConfig:
    """The config a single-stage command uses: ``--config`` if given, else the one the run recorded."""
    state = run.read_state()
    if config is None and "config" in state:
        return PathosaeConfig.model_validate(state["config"])
    return load_config(config)


def run_one_stage(
    run_root: Path, config: Path | None, name: str, on_error: OnError, **kwargs: Any
) -> dict[str, Any]:
    """One stage by name under the run lock, recorded in run.json like ``pathosae run`` does."""
    import functools
    import time

    run = RunDir(run_root)
    cfg = run_config(run, config)
    stage = next(s for s in select_stages([name]))
    fn = functools.partial(stage.load(), **kwargs) if kwargs else stage.load()
    with run.lock():
        run.set_stage(name, status="running", started=time.time())
        t0 = time.perf_counter()
        try:
            summary = fn(run, cfg, on_error)
        except BaseException as exc:
            run.set_stage(name, status="failed", error=str(exc)[:2000])
            raise
        run.set_stage(name, status="done", duration_s=round(time.perf_counter() - t0, 3),
                      summary=summary)
    return summary
