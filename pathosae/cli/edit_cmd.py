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
    model: Annotated[
        str | None,
        typer.Option("--model", help="Apply the --spec edits to the adapter layer of this "
                     "SAE-ception model (a folder under RUN/saeception/, e.g. "
                     "cycle_3/injected_seed0) through its cycle SAE."),
    ] = None,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
) -> None:
    """Effect table of SAE edits, LEACE, ComBat and random-unit edits on normal and shifted test."""
    from pathosae.workflow import run_one_stage

    if model is not None and not spec:
        raise typer.BadParameter("--model needs at least one --spec to apply", param_hint="--model")
    summary = run_one_stage(run, config, "edit", check_on_error(on_error),  # type: ignore[arg-type]
                            extra_specs=spec, model=model)
    typer.echo(f"effects: {run / 'edits' / 'effects.parquet'} ({summary['n_rows']} rows)")
    if "adapter_rows" in summary:
        typer.echo(f"adapter-layer effects: {run / 'edits' / 'adapter_effects.parquet'} "
                   f"({summary['adapter_rows']} rows)")
