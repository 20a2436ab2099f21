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
                     "cycle_3/injected_seed0) through its cycle SAE; this runs the sharpen stage, "
                     "which measures adapter-layer edits."),
    ] = None,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
) -> None:
    """Effect table of SAE edits, LEACE, ComBat and random-unit edits on normal and shifted test."""
    from pathosae.workflow import run_one_stage

    checked = check_on_error(on_error)
    if model is not None:
        if not spec:
            raise typer.BadParameter("--model needs at least one --spec to apply",
                                     param_hint="--model")
        # Adapter-layer edits are measured by the sharpen stage (same single-stage path).
        run_one_stage(run, config, "sharpen", checked, echo=typer.echo,
                      extra_specs=list(spec), model=model)
        typer.echo("adapter-layer effects: "
                   f"{run / 'saeception' / 'adapter_spec_effects.parquet'}")
        return
    summary = run_one_stage(run, config, "edit", checked, echo=typer.echo,
                            extra_specs=list(spec) if spec else None)
    typer.echo(f"effects: {run / 'edits' / 'effects.parquet'} ({summary['n_rows']} rows)")
