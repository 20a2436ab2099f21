"""The Typer application shared by every subcommand module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, cast

import typer

from pathosae.types import OnError

app = typer.Typer(
    name="pathosae",
    help="Find and remove confounders in pathology foundation-model embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c",
        help="YAML config; keys it leaves out take the built-in defaults. Without it: the config "
        "recorded in the run's run.json, else the built-in defaults, which are the CPU demo's "
        "values (listed in configs/default.yaml). For a real cohort use a foundation-model "
        "config (configs/uni.yaml etc.).",
    ),
]
RunOption = Annotated[Path, typer.Option("--run", help="Run directory.")]
OnErrorOption = Annotated[
    str,
    typer.Option(
        "--on-error",
        help="stop: stop before any work on a bad slide; skip: skip bad slides and list them.",
    ),
]


GroundTruthOption = Annotated[
    Path | None,
    typer.Option(
        "--ground-truth",
        help="Ground-truth folder of a synthetic cohort (<out>/ground_truth of `pathosae synth`); "
        "sets the config key ground_truth. Relative paths are taken from the current directory.",
    ),
]


def check_on_error(value: str) -> OnError:
    """The --on-error value, checked and typed."""
    if value not in ("stop", "skip"):
        raise typer.BadParameter(f"--on-error must be 'stop' or 'skip', got {value!r}")
    return cast(OnError, value)


def ground_truth_override(ground_truth: Path | None) -> dict[str, Any]:
    """Config overrides for --ground-truth: the folder made absolute against the current directory
    (so the run.json that records it means the same folder from anywhere)."""
    return {} if ground_truth is None else {"ground_truth": str(ground_truth.resolve())}
