"""`pathosae synth`: write a synthetic H&E cohort with known ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathosae.cli._app import app
from pathosae.schema import SPLIT


@app.command("synth")
def synth_command(  # noqa: PLR0913 (each option is an argument)
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the cohort into.")],
    slides: Annotated[int, typer.Option("--slides", "-n", help="Number of slides.")] = 24,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    confounding: Annotated[
        float,
        typer.Option(help="Label-site confounding in train/val, 0 (none) to 1 (site = label)."),
    ] = 0.8,
    site_strength: Annotated[
        float, typer.Option("--site-strength", help="Scale of the site stain effect (0: none).")
    ] = 1.0,
    scanner_strength: Annotated[
        float, typer.Option("--scanner-strength", help="Scale of the scanner effect (0: none).")
    ] = 1.0,
    sites: Annotated[int, typer.Option("--sites", help="Number of sites.")] = 3,
    scanners: Annotated[int, typer.Option("--scanners", help="Number of scanners.")] = 2,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Fraction of patients in the shifted test split.")
    ] = 0.25,
    test_shift: Annotated[
        str, typer.Option("--test-shift", help="Test-split sites: 'balanced' or 'reversed'.")
    ] = "balanced",
    min_px: Annotated[int, typer.Option("--min-px", help="Smallest slide side (level-0 px).")] = 2000,
    max_px: Annotated[int, typer.Option("--max-px", help="Largest slide side (level-0 px).")] = 3000,
    workers: Annotated[
        int, typer.Option("--workers", help="Processes rendering slides (same files whatever).")
    ] = 2,
) -> None:
    """Write pyramidal TIFF slides, OUT/cohort.csv and OUT/ground_truth/ (labels, effects, maps)."""
    from pydantic import ValidationError

    from pathosae.errors import ConfigError
    from pathosae.synth import SynthParams, generate_cohort

    try:
        params = SynthParams.model_validate({
            "confounding": confounding, "site_stain_strength": site_strength,
            "scanner_strength": scanner_strength, "n_sites": sites, "n_scanners": scanners,
            "test_fraction": test_fraction, "test_shift": test_shift,
            "slide_px_min": min_px, "slide_px_max": max_px,
        })
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid synth settings: {problems}") from None
    manifest = generate_cohort(out, n_slides=slides, seed=seed, params=params, workers=workers)
    _report(manifest)


def _report(manifest: Path) -> None:
    import pandas as pd

    cohort = pd.read_csv(manifest)
    typer.echo(f"wrote {len(cohort)} slides to {manifest.parent / 'slides'}")
    typer.echo(f"manifest: {manifest}")
    typer.echo(f"ground truth: {manifest.parent / 'ground_truth'} (see README.md there)")
    table = pd.crosstab([cohort[SPLIT], cohort["label"]], cohort["site"])
    typer.echo("slides per split, label and site:\n" + table.to_string())
