"""The Typer application shared by every subcommand module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="pathosae",
    help="Find and remove confounders in pathology foundation-model embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config; defaults to configs/default.yaml settings."),
]
RunOption = Annotated[Path, typer.Option("--run", help="Run directory.")]
OnErrorOption = Annotated[
    str,
    typer.Option(
        "--on-error",
        help="stop: stop before any work on a bad slide; skip: skip bad slides and list them.",
    ),
]


def check_on_error(value: str) -> str:
    if value not in ("stop", "skip"):
        raise typer.BadParameter(f"--on-error must be 'stop' or 'skip', got {value!r}")
    return value
