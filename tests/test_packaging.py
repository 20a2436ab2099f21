"""``pip install .`` (not editable) ships the library and the Streamlit app.

The wheel is built from a copy of the sources (so no build/ folder of the checkout is read or
written) and installed with ``--no-deps`` into a fresh venv. The dependencies come from the
project venv's site-packages through a plain path line in a .pth file: site does not process the
.pth files of a directory added that way, so the project's editable install of pathosae (a
``__editable__*.pth`` that installs a finder) stays out and pathosae is imported from the wheel.
Everything installed is then run from a directory outside the source tree.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "pathosae", "apps")

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "screenshots")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=skip)
        else:
            shutil.copy2(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(tmp / "dist")], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("pathosae-*.whl")
    return wheel


def _venv_with_wheel(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "-q", str(wheel)], cwd=tmp)
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        cwd=tmp).stdout.strip())
    deps = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    (purelib / "_project_dependencies.pth").write_text(
        "".join(f"{d}\n" for d in dict.fromkeys(deps)), encoding="utf-8")
    return venv


def test_wheel_ships_the_app_and_pathosae_app_runs_installed(tmp_path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    pages = sorted(p.name for p in (ROOT / "apps" / "pages_").glob("*.py"))
    assert "pathosae_apps/pathosae_app.py" in names
    assert {f"pathosae_apps/pages_/{p}" for p in pages} <= names
    assert not any("screenshots" in n for n in names)
    # Every module of pathosae is in the wheel: a new subpackage must be listed in pyproject.toml
    # ([tool.setuptools] packages).
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pathosae").rglob("*.py")}
    assert sorted(modules - names) == []

    venv = _venv_with_wheel(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = _run([str(venv / "bin" / "python"), "-c",
                  "import pathosae, pathosae_apps; from pathosae.cli.app_cmd import app_script; "
                  "print(pathosae.__file__); print(app_script())"], cwd=elsewhere).stdout.split()
    package, script = Path(found[0]).resolve(), Path(found[1]).resolve()
    assert package.is_relative_to(venv.resolve()), package
    assert script.is_relative_to(venv.resolve()) and script.name == "pathosae_app.py", script
    assert (script.parent / "pages_" / "units.py").is_file()

    helped = _run([str(venv / "bin" / "pathosae"), "app", "--help"], cwd=elsewhere)
    assert "--check" in helped.stdout
    checked = _run([str(venv / "bin" / "pathosae"), "app", "--check"], cwd=elsewhere)
    reported = checked.stdout.split("app ok: ", 1)[1].split(" (pages:", 1)[0]
    assert Path(reported).resolve() == script
    for page in pages:
        if page != "__init__.py":
            assert page.removesuffix(".py") in checked.stdout
