"""``pathosae confounders``: which SAE units track the confounders, and how much leaks."""

from __future__ import annotations

import typer

from pathosae.cli._app import ConfigOption, OnErrorOption, RunOption, app, check_on_error


@app.command("confounders")
def confounders_command(
    run: RunOption,
    config: ConfigOption = None,
    on_error: OnErrorOption = "stop",
) -> None:
    """Association scan (FDR), leakage probes, PathoROB metrics, directions and plots."""
    from pathosae.config import load_config
    from pathosae.confounders.stage import run_stage
    from pathosae.run import RunDir

    check_on_error(on_error)
    run_dir = RunDir(run)
    cfg = load_config(config)
    with run_dir.lock():
        run_dir.set_stage("confounders", status="running")
        summary = run_stage(run_dir, cfg, on_error)  # type: ignore[arg-type]
        run_dir.set_stage("confounders", status="done", summary=summary)
    state = "unchanged, skipped" if summary.get("skipped") else "written"
    typer.echo(f"confounders ({state}) under {run_dir.root / 'confounders'}")
    typer.echo(f"flagged units (q <= {summary['fdr_alpha']}): {summary['flagged_units']}")
    for key, auroc in summary["probe_auroc"].items():
        typer.echo(f"probe AUROC {key}: {auroc}")
