"""``pathosae confounders``: which SAE units track the confounders, and how much leaks."""

from __future__ import annotations

import typer

from pathosae.cli._app import (
    ConfigOption,
    GroundTruthOption,
    OnErrorOption,
    RunOption,
    app,
    check_on_error,
    ground_truth_override,
)


@app.command("confounders")
def confounders_command(
    run: RunOption,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
    ground_truth: GroundTruthOption = None,
) -> None:
    """Association scan (FDR), leakage probes, PathoROB metrics, directions and plots."""
    from pathosae.workflow import run_one_stage

    summary = run_one_stage(run, config, "confounders", check_on_error(on_error),
                            overrides=ground_truth_override(ground_truth) or None, echo=typer.echo)
    state = "unchanged, skipped" if summary.get("skipped") else "written"
    typer.echo(f"confounders ({state}) under {run / 'confounders'}")
    typer.echo(f"flagged units (q <= {summary['fdr_alpha']}): {summary['flagged_units']}")
    for key, auroc in summary["probe_auroc"].items():
        typer.echo(f"probe AUROC {key}: {auroc}")
