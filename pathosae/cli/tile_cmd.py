"""`pathosae tile`: validate the manifest, then detect tissue and tile every slide."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, app, check_on_error


@app.command("tile")
def tile_command(
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", "-m", help="Cohort manifest CSV (optional when resuming)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.")] = None,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=1, help="Slides tiled in parallel (tiling.num_workers)."),
    ] = None,
) -> None:
    """Write RUN/tiles/<slide_id>.h5 (tile coordinates) and RUN/qc/<slide_id>.png per slide.

    Runs the cohort stage first; slides tiled with the same settings are skipped.
    """
    from pathosae.workflow import prepare_run, run_pipeline

    checked = check_on_error(on_error)
    overrides = {"tiling": {"num_workers": workers}} if workers is not None else None
    run, cfg = prepare_run(manifest, out, config, overrides=overrides)
    summaries = run_pipeline(run, cfg, ["cohort", "tile"], on_error=checked, echo=typer.echo)
    tile = summaries["tile"]
    typer.echo(
        f"tiled {tile['n_slides']} slide(s), {tile['n_tiles']} tiles "
        f"({tile['n_skipped_existing']} already done) -> {run.tiles_dir}, QC in {run.qc_dir}"
    )
    if tile["failed"]:
        typer.echo(f"{len(tile['failed'])} slide(s) failed; see {run.tiles_dir / '_failed.csv'}")
