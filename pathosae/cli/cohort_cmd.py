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
    from pathosae.workflow import prepare_run, run_pipeline

    checked = check_on_error(on_error)
    # The same path as `pathosae run --stages cohort`: run.json written under the run lock.
    run, cfg = prepare_run(manifest, out, config)
    summary = run_pipeline(run, cfg, ["cohort"], on_error=checked, echo=typer.echo)["cohort"]
    typer.echo(f"cohort: {summary['n_slides']} slides, {summary['n_patients']} patients, "
               f"splits {summary['splits']} -> {run.cohort_path}")
    if summary["skipped"]:
        typer.echo(f"skipped {len(summary['skipped'])} bad row(s); see {run.cohort_errors_path}")
    absent = int(summary.get("n_slides_unavailable", 0))
    if absent:
        named = ", ".join(summary["slides_unavailable"]) + (", ..." if absent > len(
            summary["slides_unavailable"]) else "")
        typer.echo(
            f"{absent} slide(s) have no slide file ({named}): recorded as features-only "
            f"(slide_available false). Import their features with `pathosae import-features "
            f"--format trident DIR --run {run.root}`, then run the stages after embedding "
            f"(`pathosae run --out {run.root} --from sae`); tile and embed refuse them."
        )
