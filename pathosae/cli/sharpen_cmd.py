"""``pathosae sharpen``: SAE-ception with confounder injection and its controls (RUN/saeception/)."""

from __future__ import annotations

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, RunOption, app, check_on_error


@app.command("sharpen")
def sharpen_command(
    run: RunOption,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
) -> None:
    """Train SAE-ception cycles (injected, plain, no-aux, random target) over several seeds."""
    from pathosae.workflow import run_one_stage

    summary = run_one_stage(run, config, "sharpen", check_on_error(on_error))  # type: ignore[arg-type]
    for variant, values in summary.get("last_cycle", {}).items():
        typer.echo(f"{variant}: {values}")
