"""Command-line interface: a thin layer over the library, one module per stage."""

from __future__ import annotations

import sys

import typer

# Each module registers its subcommand(s) on ``app`` when imported.
from pathosae.cli import (
    app_cmd,
    cohort_cmd,
    config_cmd,
    confounders_cmd,
    doctor_cmd,
    edit_cmd,
    embed_cmd,
    run_cmd,
    sae_cmd,
    sharpen_cmd,
    synth_cmd,
    synth_features_cmd,
    tile_cmd,
)
from pathosae.cli._app import app
from pathosae.errors import PathosaeError


def main() -> None:
    """Entry point of the ``pathosae`` console script: known errors print cleanly, exit code 2."""
    try:
        app()
    except PathosaeError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


__all__ = [
    "app",
    "app_cmd",
    "cohort_cmd",
    "config_cmd",
    "confounders_cmd",
    "doctor_cmd",
    "edit_cmd",
    "embed_cmd",
    "main",
    "run_cmd",
    "sae_cmd",
    "sharpen_cmd",
    "synth_cmd",
    "synth_features_cmd",
    "tile_cmd",
]
