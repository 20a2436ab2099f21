"""`pathosae synth-features`: a feature-level synthetic cohort (TRIDENT layout, no slides)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pathosae.cli._app import app
from pathosae.schema import SPLIT

if TYPE_CHECKING:
    from pathosae.synth.feature_params import FeatureSynthParams


@app.command("synth-features")
def synth_features_command(  # noqa: PLR0913 (each option is an argument)
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the cohort into.")],
    slides: Annotated[int, typer.Option("--slides", "-n", help="Number of slides.")] = 200,
    tiles: Annotated[
        int, typer.Option("--tiles", help="Mean tiles per slide (each slide varies by ±20%).")
    ] = 500,
    dim: Annotated[int, typer.Option("--dim", help="Feature width.")] = 1024,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    confounding: Annotated[
        float,
        typer.Option(help="Label-site confounding in train/val, 0 (none) to 1 (site = label)."),
    ] = 0.8,
    sites: Annotated[int, typer.Option("--sites", help="Number of sites.")] = 4,
    scanners: Annotated[int, typer.Option("--scanners", help="Number of scanners.")] = 2,
    stain_batches: Annotated[
        int, typer.Option("--stain-batches", help="Number of stain batches.")
    ] = 3,
    test_shift: Annotated[
        str, typer.Option("--test-shift", help="Test-split sites: 'balanced' or 'reversed'.")
    ] = "balanced",
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Any other setting as KEY=VALUE (repeatable), e.g. "
                     "-p noise=0.3 -p site_shift=0; the keys are FeatureSynthParams' fields."),
    ] = None,
) -> None:
    """Write OUT/cohort.csv (no path column), TRIDENT feature files under OUT/trident/ and
    OUT/ground_truth/ (planted atoms, directions, per-slide truth), slide by slide."""
    from pathosae.synth.features import FEATURE_FOLDER, generate_feature_cohort

    values: dict[str, Any] = {
        "tiles": tiles, "dim": dim, "confounding": confounding, "n_sites": sites,
        "n_scanners": scanners, "n_stain_batches": stain_batches, "test_shift": test_shift,
        **_parse_params(param or []),
    }
    manifest = generate_feature_cohort(out, n_slides=slides, seed=seed, params=_params(values))
    _report(manifest, manifest.parent / FEATURE_FOLDER)


def _parse_params(items: list[str]) -> dict[str, str]:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--param {item!r} is not KEY=VALUE (e.g. -p noise=0.3)")
        parsed[key.strip()] = value.strip()
    return parsed


def _params(values: dict[str, Any]) -> FeatureSynthParams:
    from pydantic import ValidationError

    from pathosae.errors import ConfigError
    from pathosae.synth.feature_params import FeatureSynthParams

    try:
        return FeatureSynthParams.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid synth-features settings: {problems}. Fix: correct the "
                          "option or --param KEY=VALUE named here.") from None


def _report(manifest: Path, folder: Path) -> None:
    import pandas as pd

    cohort = pd.read_csv(manifest)
    out = manifest.parent
    typer.echo(f"wrote {len(cohort)} slides of features to {folder}")
    typer.echo(f"manifest (no path column): {manifest}")
    typer.echo(f"ground truth: {out / 'ground_truth'} (truth.json, atoms.npy, directions.npy)")
    table = pd.crosstab([cohort[SPLIT], cohort["label"]], cohort["site"])
    typer.echo("slides per split, label and site:\n" + table.to_string())
    config = out / "config.yaml"
    typer.echo("next (RUN: a new run folder):\n"
               f"  pathosae cohort --manifest {manifest} --out RUN --config {config}\n"
               f"  pathosae import-features {out / 'trident'} --format trident --run RUN\n"
               "  pathosae sae --run RUN\n"
               f"  pathosae confounders --run RUN --ground-truth {out / 'ground_truth'}")
