"""``pathosae sharpen``: SAE-ception with confounder injection and its controls (RUN/saeception/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, RunOption, app, check_on_error


@app.command("sharpen")
def sharpen_command(
    run: RunOption,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
    spec: Annotated[
        list[Path] | None,
        typer.Option("--spec", help="Adapter-layer edit spec (.json/.yaml, `layer: adapter` with "
                     "its model) measured beside those in edit.specs; repeatable. Table: "
                     "RUN/saeception/adapter_spec_effects.parquet."),
    ] = None,
) -> None:
    """Train SAE-ception cycles (injected, plain, no-aux, random target) over several seeds."""
    from pathosae.workflow import run_one_stage

    kwargs: dict[str, Any] = {"extra_specs": list(spec)} if spec else {}
    summary = run_one_stage(run, config, "sharpen", check_on_error(on_error), echo=typer.echo,
                            **kwargs)
    for variant, values in summary.get("last_cycle", {}).items():
        typer.echo(f"{variant}: {values}")
    if spec:
        typer.echo(f"adapter-layer effects: {run / 'saeception' / 'adapter_spec_effects.parquet'}")
