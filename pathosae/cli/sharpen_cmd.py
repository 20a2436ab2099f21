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
    from pathosae.config import load_config
    from pathosae.run import RunDir
    from pathosae.saeception.stage import run_stage

    check_on_error(on_error)
    run_dir = RunDir(run)
    cfg = load_config(config)
    with run_dir.lock():
        run_dir.set_stage("saeception", status="running")
        summary = run_stage(run_dir, cfg, on_error)  # type: ignore[arg-type]
        run_dir.set_stage("saeception", status="done", summary=summary)
    for variant, values in summary.get("last_cycle", {}).items():
        typer.echo(f"{variant}: {values}")
