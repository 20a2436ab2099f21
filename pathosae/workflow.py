"""Starting or resuming a run: which manifest and config it uses, then its stages under a lock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathosae.config import PathosaeConfig, resolve_config
from pathosae.errors import ConfigError, PathosaeError
from pathosae.io import sha256_file
from pathosae.pipeline import Stage, run_stages, select_stages
from pathosae.run import RunDir
from pathosae.stage_needs import PIXEL_STAGES, STAGE_NEEDS, check_needs
from pathosae.types import OnError


def prepare_run(
    manifest: Path | None,
    out: Path | None,
    config: Path | None,
    executor: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[RunDir, PathosaeConfig]:
    """Resolve the run directory, manifest and config; record them in run.json.

    Resuming a run needs neither ``--manifest`` nor ``--config``: run.json has both. The config
    comes from :func:`pathosae.config.resolve_config` (flags in ``overrides``, and ``executor``,
    over ``--config`` over the recorded config over the built-in defaults); flags are recorded in
    run.json like any key, so a resumed run keeps them.
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
    flags = dict(overrides or {})
    if executor is not None:
        flags["executor"] = {**flags.get("executor", {}), "kind": executor}
    cfg = resolve_config(config, state.get("config"), flags or None)
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
    stage_kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Preflight, then the chosen stages through :func:`pathosae.pipeline.run_stages` under the
    run lock; ``stage_kwargs`` are extra keyword arguments per stage name."""
    chosen = select_stages(stages, start, until)
    preflight(cfg, chosen, stage_kwargs, run=run, on_error=on_error)
    with run.lock():
        return run_stages(run, cfg, chosen, on_error, echo, _with_cohort_needs(chosen, stage_kwargs))


def _with_cohort_needs(
    chosen: list[Stage], stage_kwargs: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]] | None:
    """The cohort stage requires every slide file only when tile or embed runs in this call."""
    names = {stage.name for stage in chosen}
    if "cohort" not in names or not names & set(PIXEL_STAGES):
        return stage_kwargs
    kwargs = dict(stage_kwargs or {})
    kwargs["cohort"] = {**kwargs.get("cohort", {}), "need_slides": True}
    return kwargs


def preflight(
    cfg: PathosaeConfig,
    chosen: list[Stage],
    stage_kwargs: dict[str, dict[str, Any]] | None = None,
    *,
    run: RunDir | None = None,
    on_error: OnError = "stop",
) -> None:
    """Fail before any work on what a later stage would find only after earlier ones ran.

    The config first (encoder and weights, ground truth, edit specs); then, given the ``run``,
    every stage's needs in :data:`pathosae.stage_needs.STAGE_NEEDS`: the cohort's columns and
    splits, the slide files of the pixel stages and the features of the later ones.
    """
    names = {stage.name for stage in chosen}
    if any(STAGE_NEEDS[name].weights for name in names):
        from pathosae.doctor import check_weights
        from pathosae.encoders.registry import get_spec

        get_spec(cfg.embedding.encoder)  # an unknown encoder names the known ones
        check = check_weights(cfg)
        if not check.ok:
            raise ConfigError(f"embedding.weights: {check.detail}. Fix: {check.fix}.")
    if names & {"sae", "confounders"}:
        _check_ground_truth(cfg.ground_truth)
    if names & {"edit", "sharpen"}:
        _check_edit_specs(cfg, names, stage_kwargs or {})
    if run is not None:
        check_needs(run, cfg, [stage.name for stage in chosen], on_error)


def _check_ground_truth(folder: Path | None) -> None:
    """The ground-truth folder, when one is set, exists (the sae and confounders stages read it)."""
    if folder is not None and not folder.is_dir():
        raise ConfigError(
            f"ground_truth: folder {folder} does not exist. Fix: pass the <out>/ground_truth "
            "folder `pathosae synth` or `pathosae synth-features` wrote (--ground-truth DIR), or "
            "leave ground_truth unset for a cohort without one."
        )


def _check_edit_specs(
    cfg: PathosaeConfig, names: set[str], stage_kwargs: dict[str, dict[str, Any]]
) -> None:
    """Spec files exist, and adapter-layer specs go to the sharpen stage, which measures them."""
    from pathosae.edit.spec import EditSpec

    for path in cfg.edit.specs:
        if not Path(path).is_file():
            raise ConfigError(
                f"edit.specs: spec file {path} does not exist. Fix: correct the path in the "
                "config's edit.specs, or remove it."
            )
    for stage, kwargs in stage_kwargs.items():
        for path in kwargs.get("extra_specs") or []:
            if not Path(path).is_file():
                raise ConfigError(
                    f"--spec {path} does not exist. Fix: pass an existing .json/.yaml spec file "
                    f"to `pathosae {stage}`."
                )
    if "edit" not in names or "sharpen" in names:
        return
    adapter = [str(p) for p in cfg.edit.specs if EditSpec.from_file(p).layer == "adapter"]
    if adapter:
        raise ConfigError(
            f"edit.specs: {', '.join(adapter)} edit the adapter layer; adapter-layer specs are "
            "measured by the sharpen stage. Fix: include sharpen in --stages, or run "
            "`pathosae sharpen --run RUN`."
        )
    edit_specs = stage_kwargs.get("edit", {}).get("extra_specs") or []
    adapter = [str(p) for p in edit_specs if EditSpec.from_file(p).layer == "adapter"]
    if adapter:
        raise ConfigError(
            f"--spec {', '.join(adapter)} edit the adapter layer; adapter-layer specs are "
            "measured by the sharpen stage. Fix: `pathosae sharpen --run RUN --spec FILE`, or "
            "`pathosae edit --run RUN --spec FILE --model MODEL`."
        )


def run_config(
    run: RunDir, config: Path | None, overrides: dict[str, Any] | None = None
) -> PathosaeConfig:
    """The config a single-stage command uses: flags over ``--config`` over the recorded config
    over the built-in defaults (:func:`pathosae.config.resolve_config`)."""
    return resolve_config(config, run.read_state().get("config"), overrides)


def run_one_stage(
    run_root: Path,
    config: Path | None,
    name: str,
    on_error: OnError,
    *,
    overrides: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    **kwargs: Any,
) -> dict[str, Any]:
    """One stage by name, the way ``pathosae run`` runs it: preflight, the run lock, the
    configured executor and run.json bookkeeping (:func:`run_pipeline`).

    ``overrides`` are command-line flags over the config; ``kwargs`` go to the stage's
    ``run_stage`` (e.g. ``extra_specs``). The resolved config is used for this command only: the
    config recorded in run.json is left as ``pathosae run`` wrote it.
    """
    run = RunDir(run_root)
    cfg = run_config(run, config, overrides)
    summaries = run_pipeline(run, cfg, [name], on_error=on_error, echo=echo,
                             stage_kwargs={name: kwargs} if kwargs else None)
    return summaries[name]
