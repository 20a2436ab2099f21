"""``pathosae app RUN``: open a run in the Streamlit app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from pathosae.cli._app import app

APP_SCRIPT = Path(__file__).resolve().parents[2] / "apps" / "pathosae_app.py"


def streamlit_command(run: Path, port: int | None, headless: bool) -> list[str]:
    """The ``streamlit run apps/pathosae_app.py -- --run RUN`` command line."""
    command = [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
               "--browser.gatherUsageStats", "false"]
    if port is not None:
        command += ["--server.port", str(port)]
    if headless:
        command += ["--server.headless", "true"]
    return [*command, "--", "--run", str(run)]


@app.command("app")
def app_command(
    run: Annotated[Path, typer.Argument(help="Run directory (the --out of `pathosae run`).")],
    port: Annotated[int | None, typer.Option("--port", help="Port to serve on.")] = None,
    headless: Annotated[bool, typer.Option(help="Do not open a browser window.")] = False,
    prepare: Annotated[
        bool, typer.Option(help="Build the unit activation cache before the server starts.")
    ] = True,
) -> None:
    """Browse units, confounders, edits and SAE-ception results of a run in the browser."""
    from pathosae.app import RunView
    from pathosae.errors import PathosaeError

    view = RunView(run)
    if not APP_SCRIPT.is_file():
        raise PathosaeError(f"the app script {APP_SCRIPT} is missing. Fix: run from a source "
                            "checkout of pathosae (the app lives in apps/).")
    if prepare and view.sae_names() and view.status("embed").done:
        typer.echo("preparing unit activations (once per run and SAE)...")
        view.prepare()
    raise typer.Exit(subprocess.call(streamlit_command(view.root, port, headless)))
