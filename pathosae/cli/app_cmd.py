"""``pathosae app RUN``: open a run in the Streamlit app.

The app's files live in apps/ at the top of the repository (the script ``pathosae_app.py`` and
its pages, the package ``pages_``). A wheel installs that folder as the package ``pathosae_apps``
(pyproject.toml), so ``pip install pathosae`` ships the app; in a source checkout (an editable
install included) the script is read from apps/ directly, so the app always matches the code.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from pathosae.cli._app import app
from pathosae.errors import PathosaeError

SCRIPT_NAME = "pathosae_app.py"
PAGES_PACKAGE = "pages_"
INSTALLED_PACKAGE = "pathosae_apps"
# apps/ beside the pathosae package: a source checkout (also an editable install of one).
CHECKOUT_SCRIPT = Path(__file__).resolve().parents[2] / "apps" / SCRIPT_NAME


def installed_script() -> Path | None:
    """The script inside the installed package ``pathosae_apps`` (a namespace package: apps/
    has no ``__init__``), or None without one. Found without importing anything of it."""
    spec = importlib.util.find_spec(INSTALLED_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        script = Path(folder) / SCRIPT_NAME
        if script.is_file():
            return script
    return None


def app_script() -> Path:
    """The Streamlit script: the source checkout's apps/ when pathosae runs from one, else the
    installed ``pathosae_apps``; an error naming the fix when neither exists."""
    if CHECKOUT_SCRIPT.is_file():
        return CHECKOUT_SCRIPT
    found = installed_script()
    if found is None:
        raise PathosaeError(
            f"the app script is missing: neither {CHECKOUT_SCRIPT} (source checkout) nor the "
            f"package {INSTALLED_PACKAGE} (installed with pathosae) holds {SCRIPT_NAME}. Fix: "
            "reinstall pathosae (`pip install --force-reinstall pathosae`, or `pip install .` "
            "in a source checkout)."
        )
    return found


def check_app(script: Path) -> list[str]:
    """The script compiles and every page module imports, as Streamlit would run them (the
    script's folder first on sys.path); returns the page modules imported."""
    try:
        compile(script.read_text(encoding="utf-8"), str(script), "exec")
    except SyntaxError as exc:
        raise PathosaeError(f"the app script {script} does not compile: {exc}") from exc
    pages = sorted(p.stem for p in (script.parent / PAGES_PACKAGE).glob("*.py") if p.stem != "__init__")
    if not pages:
        raise PathosaeError(f"the app's pages are missing: no modules in {script.parent / PAGES_PACKAGE}. "
                            "Fix: reinstall pathosae.")
    sys.path.insert(0, str(script.parent))
    try:
        for page in pages:
            importlib.import_module(f"{PAGES_PACKAGE}.{page}")
    except ImportError as exc:
        raise PathosaeError(f"an app page does not import ({script.parent / PAGES_PACKAGE}): "
                            f"{exc}") from exc
    finally:
        sys.path.remove(str(script.parent))
    return pages


def streamlit_command(run: Path, port: int | None, headless: bool) -> list[str]:
    """The ``streamlit run <app script> -- --run RUN`` command line."""
    command = [sys.executable, "-m", "streamlit", "run", str(app_script()),
               "--browser.gatherUsageStats", "false"]
    if port is not None:
        command += ["--server.port", str(port)]
    if headless:
        command += ["--server.headless", "true"]
    return [*command, "--", "--run", str(run)]


@app.command("app")
def app_command(
    run: Annotated[
        Path | None, typer.Argument(help="Run directory (the --out of `pathosae run`).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to serve on.")] = None,
    headless: Annotated[bool, typer.Option(help="Do not open a browser window.")] = False,
    prepare: Annotated[
        bool, typer.Option(help="Build the unit activation cache before the server starts.")
    ] = True,
    check: Annotated[
        bool, typer.Option("--check", help="Only check that the app's script and pages are "
                           "installed and import (no run directory needed, no server).")
    ] = False,
) -> None:
    """Browse units, confounders, edits and SAE-ception results of a run in the browser."""
    from pathosae.app import RunView

    if check:
        script = app_script()
        pages = check_app(script)
        typer.echo(f"app ok: {script} (pages: {', '.join(pages)})")
        return
    if run is None:
        raise PathosaeError("no run directory given. Fix: `pathosae app RUN` (the --out of "
                            "`pathosae run`).")
    view = RunView(run)
    command = streamlit_command(view.root, port, headless)
    if prepare and view.sae_names() and view.status("embed").done:
        typer.echo("preparing unit activations (once per run and SAE)...")
        view.prepare()
    raise typer.Exit(subprocess.call(command))
