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
    from pathosae.config import load_config
    from pathosae.edit.stage import run_stage
    from pathosae.run import RunDir

    check_on_error(on_error)
    run_dir = RunDir(run)
    cfg = load_config(config)
    with run_dir.lock():
        run_dir.set_stage("edit", status="running")
        summary = run_stage(run_dir, cfg, on_error, extra_specs=spec)  # type: ignore[arg-type]
        run_dir.set_stage("edit", status="done", summary=summary)
    typer.echo(f"effects: {run_dir.root / 'edits' / 'effects.parquet'} ({summary['n_rows']} rows)")
