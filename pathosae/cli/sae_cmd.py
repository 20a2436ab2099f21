"""``pathosae sae``: train and evaluate the configured SAEs on a run's features."""

from __future__ import annotations

import typer

from pathosae.cli._app import (
    ConfigOption,
    GroundTruthOption,
    OnErrorOption,
    RunOption,
    app,
    check_on_error,
    ground_truth_override,
)


@app.command("sae")
def sae_command(
    run: RunOption,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
    ground_truth: GroundTruthOption = None,
) -> None:
    """Train the SAE(s) named in sae.models on train-split tiles; metrics on held-out slides."""
    from pathosae.workflow import run_one_stage

    summary = run_one_stage(run, config, "sae", check_on_error(on_error),
                            overrides=ground_truth_override(ground_truth) or None, echo=typer.echo)
    for name, info in summary["models"].items():
        typer.echo(f"{name}: {info}")
