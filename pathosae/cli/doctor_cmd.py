"""`pathosae doctor`: environment checks with the fix for each problem."""

from __future__ import annotations

import typer

from pathosae.cli._app import ConfigOption, app


@app.command("doctor")
def doctor_command(config: ConfigOption = None) -> None:
    """Check OpenSlide, the torch device, the encoder weights and Slurm; say what to fix."""
    from pathosae.config import resolve_config
    from pathosae.doctor import run_checks

    checks = run_checks(resolve_config(config))
    for check in checks:
        mark = "ok " if check.ok else ("FAIL" if check.required else "warn")
        typer.echo(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok and check.fix:
            typer.echo(f"       fix: {check.fix}")
    if any(c.required and not c.ok for c in checks):
        raise typer.Exit(1)
