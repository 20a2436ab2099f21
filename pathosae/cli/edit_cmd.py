"""``pathosae edit``: measure confounder edits and baselines on a run (RUN/edits/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, RunOption, app, check_on_error


@app.command("edit")
def edit_command(
    run: RunOption,
    spec: Annotated[
        list[Path] | None,
        typer.Option("--spec", help="Edit spec (.json/.yaml) to measure beside the defaults."),
    ] = None,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
) -> None:
    """Effect table of SAE edits, LEACE, ComBat and random-unit edits on normal and shifted test."""
    from pathosae.workflow import run_one_stage

    summary = run_one_stage(run, config, "edit", check_on_error(on_error),  # type: ignore[arg-type]
                            extra_specs=spec)
    typer.echo(f"effects: {run / 'edits' / 'effects.parquet'} ({summary['n_rows']} rows)")
