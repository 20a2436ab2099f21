"""`pathosae run`: the whole pipeline, or a selection of its stages, on one run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathosae.cli._app import (
    ConfigOption,
    GroundTruthOption,
    OnErrorOption,
    app,
    check_on_error,
    ground_truth_override,
)


@app.command("run")
def run_command(  # noqa: PLR0913 (each option is an argument)
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", "-m", help="Cohort manifest CSV (optional when resuming)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default runs/<manifest>).")
    ] = None,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
    stages: Annotated[
        str | None, typer.Option("--stages", help="Comma-separated stages to run (default all).")
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help="First stage to run.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Last stage to run.")] = None,
    executor: Annotated[
        str | None,
        typer.Option("--executor", help="local or slurm (default: the config's executor.kind)."),
    ] = None,
    ground_truth: GroundTruthOption = None,
) -> None:
    """Run cohort -> tile -> embed -> sae -> ... on a run directory; finished work is reused."""
    from pathosae.workflow import prepare_run, run_pipeline

    checked = check_on_error(on_error)
    if executor not in (None, "local", "slurm"):
        raise typer.BadParameter(f"--executor must be 'local' or 'slurm', got {executor!r}")
    run, cfg = prepare_run(manifest, out, config, executor=executor,
                           overrides=ground_truth_override(ground_truth))
    selected = stages.split(",") if stages else None
    run_pipeline(run, cfg, selected, start, until, checked, echo=typer.echo)
    from pathosae.summary import run_summary

    typer.echo("\n" + "\n".join(run_summary(run)))
