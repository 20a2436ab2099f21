"""`pathosae cohort`: validate a manifest and write the run's cohort table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, app, check_on_error


@app.command("cohort")
def cohort_command(
    manifest: Annotated[Path, typer.Option("--manifest", "-m", help="Cohort manifest CSV.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")],
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
) -> None:
    """Validate a manifest (every bad row listed at once) and write RUN/cohort.parquet."""
    from pathosae.cohort import build_cohort
    from pathosae.config import load_config
    from pathosae.io import sha256_file
    from pathosae.run import RunDir

    cfg = load_config(config)
    run = RunDir(out)
    run.init(cfg.model_dump(mode="json"), str(manifest.resolve()), sha256_file(manifest)
             if manifest.is_file() else None)
    summary = build_cohort(run, manifest, cfg, check_on_error(on_error))  # type: ignore[arg-type]
    typer.echo(f"cohort: {summary['n_slides']} slides, {summary['n_patients']} patients, "
               f"splits {summary['splits']} -> {run.cohort_path}")
    if summary["skipped"]:
        typer.echo(f"skipped {len(summary['skipped'])} bad row(s); see {run.cohort_errors_path}")
