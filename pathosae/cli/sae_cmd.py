"""``pathosae sae``: train and evaluate the configured SAEs on a run's features."""

from __future__ import annotations

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, RunOption, app, check_on_error


@app.command("sae")
def sae_command(
    run: RunOption,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
) -> None:
    """Train the SAE(s) named in sae.models on train-split tiles; metrics on held-out slides."""
    from pathosae.workflow import run_one_stage

    summary = run_one_stage(run, config, "sae", check_on_error(on_error))  # type: ignore[arg-type]
    for name, info in summary["models"].items():
        typer.echo(f"{name}: {info}")
