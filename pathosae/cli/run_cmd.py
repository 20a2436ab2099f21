"""`pathosae run`: the whole pipeline, or a selection of its stages, on one run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, app, check_on_error


@app.command("run")
def run_command(
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
) -> None:
    """Run cohort -> tile -> embed -> sae -> ... on a run directory; finished work is reused."""
    from pathosae.workflow import prepare_run, run_pipeline

    check_on_error(on_error)
    if executor not in (None, "local", "slurm"):
        raise typer.BadParameter(f"--executor must be 'local' or 'slurm', got {executor!r}")
    run, cfg = prepare_run(manifest, out, config, executor=executor)
    selected = stages.split(",") if stages else None
    run_pipeline(run, cfg, selected, start, until, on_error, echo=typer.echo)  # type: ignore[arg-type]
    from pathosae.summary import run_summary

    typer.echo("\n" + "\n".join(run_summary(run)))
