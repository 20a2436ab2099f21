"""`pathosae embed` and `pathosae import-features`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, RunOption, app, check_on_error


@app.command("embed")
def embed_command(
    run: RunOption,
    config: ConfigOption = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    num_workers: Annotated[
        int | None, typer.Option("--num-workers", min=0, help="Tile-reading processes.")
    ] = None,
    on_error: OnErrorOption = "stop",
) -> None:
    """Embed every tiled slide with the configured encoder; finished slides are skipped."""
    from pathosae.workflow import run_one_stage

    checked = check_on_error(on_error)
    embedding: dict[str, Any] = {
        k: v for k, v in
        {"device": device, "batch_size": batch_size, "num_workers": num_workers}.items()
        if v is not None
    }
    run_one_stage(run, config, "embed", checked,
                  overrides={"embedding": embedding} if embedding else None, echo=typer.echo)


@app.command("import-features")
def import_features_command(
    folder: Annotated[Path, typer.Argument(help="TRIDENT features_<encoder> or CLAM folder.")],
    run: RunOption,
    fmt: Annotated[str, typer.Option("--format", help="trident or clam.")] = "trident",
    encoder: Annotated[
        str | None,
        typer.Option("--encoder", help="Name of the feature set (default: from the folder)."),
    ] = None,
) -> None:
    """Adopt h5 feature files that TRIDENT or CLAM already computed (no re-embedding)."""
    from pathosae.features import FeatureFormat, import_features
    from pathosae.run import RunDir

    if fmt not in ("trident", "clam"):
        raise typer.BadParameter(f"--format must be 'trident' or 'clam', got {fmt!r}")
    summary = import_features(cast("FeatureFormat", fmt), folder, RunDir(run), encoder)
    typer.echo(
        f"imported {summary['imported']} slides ({summary['dim']}-d) into "
        f"features/{summary['features']}"
    )
    for key in ("not_in_cohort", "cohort_without_file"):
        if summary[key]:
            typer.echo(f"  {key.replace('_', ' ')}: {', '.join(summary[key])}")

