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
    from pathosae.config import load_config
    from pathosae.run import RunDir
    from pathosae.sae.stage import run_stage

    check_on_error(on_error)
    run_dir = RunDir(run)
    cfg = load_config(config)
    with run_dir.lock():
        run_dir.set_stage("sae", status="running")
        summary = run_stage(run_dir, cfg, on_error)  # type: ignore[arg-type]
        run_dir.set_stage("sae", status="done", summary=summary)
    for name, info in summary["models"].items():
        typer.echo(f"{name}: {info}")
