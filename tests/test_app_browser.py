"""End to end: the app server opened in headless Chromium, clicked through to a unit and an edit.

Needs Debian's Chromium and the playwright package (test extra). Without them the test skips on
a developer machine and fails where the browser is required: in CI (the CI variable set) or with
PATHOSAE_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from app_fixtures import copy_run, shared_small_run

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
APP = Path(__file__).resolve().parent.parent / "apps" / "pathosae_app.py"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS_ENV = "PATHOSAE_APP_SCREENSHOTS"  # a folder: also save a screenshot of each page
pytestmark = pytest.mark.slow


def browser_required() -> bool:
    """In CI (CI set, as CI services do) or with PATHOSAE_REQUIRE_BROWSER=1 a missing browser is
    a failure, not a skip."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("PATHOSAE_REQUIRE_BROWSER") == "1"


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install chromium, as root; `make system-deps`)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def check_browser() -> None:
    """Skip (developer machine) or fail (browser required) when the browser cannot run."""
    reason = missing_browser()
    if reason is None:
        return
    if browser_required():
        pytest.fail(f"{reason}; CI / PATHOSAE_REQUIRE_BROWSER=1 require the browser test")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    check_browser()
    # A copy of its own: the test saves an edit spec into the run it serves.
    run = copy_run(shared_small_run(tmp_path_factory.getbasetemp()),
                   tmp_path_factory.mktemp("browser_run") / "run")
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--", "--run", str(run)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail(f"the app server did not start; see {log.name}")
                time.sleep(0.5)
        yield url, run
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture()
def page(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # A fresh profile folder per test (Playwright passes it as --user-data-dir).
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000},
        )
        yield context.pages[0] if context.pages else context.new_page()
        context.close()


def snapshot(page, name: str) -> None:
    folder = os.environ.get(SCREENSHOTS_ENV)
    if not folder:
        return
    from PIL import Image

    target = Path(folder) / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = target.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=False)
    # A 256-colour palette keeps each screenshot small enough for the README.
    Image.open(raw).convert("RGB").quantize(colors=256).save(target, optimize=True)
    raw.unlink()


def wait_idle(page) -> None:
    """Until Streamlit has finished running the script (its status widget disappears)."""
    page.wait_for_timeout(500)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=120_000)


def test_the_first_page_is_the_verdict_on_each_confounder(server, page) -> None:
    from pathosae.app import RunView

    url, run = server
    confounders = list(RunView(run).config.cohort.confounders)
    assert confounders
    page.goto(url, wait_until="networkidle")  # no page named: the app opens on the verdict
    page.get_by_role("heading", name="Verdict").wait_for(timeout=120_000)
    wait_idle(page)
    main = page.get_by_test_id("stMain")
    for name in confounders:
        assert main.get_by_role("heading", name=name).first.is_visible()
    assert main.get_by_text("Present?").count() == len(confounders)
    assert main.get_by_text("Best fix").count() >= len(confounders)
    assert page.get_by_test_id("stSidebar").get_by_text("Verdict", exact=True).is_visible()
    snapshot(page, "verdict")


def test_click_through_to_a_unit_and_an_edit(server, page) -> None:
    from pathosae.app import RunView

    url, run = server
    view = RunView(run)
    units = view.activations(view.default_sae()).units.sort_values("frequency")
    unit = int(units.iloc[-1]["unit"])

    page.goto(f"{url}/?page=Cohort", wait_until="networkidle")
    page.get_by_text("Cross-tabulation").wait_for(timeout=120_000)
    wait_idle(page)
    assert page.get_by_text("Tissue detection and tiles (QC)").is_visible()
    snapshot(page, "cohort")

    page.get_by_test_id("stSidebar").get_by_text("Units", exact=True).click()
    page.get_by_text("Top-activating tiles").wait_for(timeout=120_000)
    unit_box = page.get_by_label("Unit", exact=True)
    unit_box.fill(str(unit))
    unit_box.press("Enter")
    page.get_by_role("heading", name=f"Unit {unit}").wait_for(timeout=120_000)
    wait_idle(page)
    assert page.get_by_text("Similar units (decoder cosine)").is_visible()
    assert page.get_by_text(f"{int(units.iloc[-1]['n_tiles']):,}", exact=True).first.is_visible()
    assert page.locator("[data-testid='stImage'] img").count() >= 6  # tiles read from slides
    snapshot(page, "units")

    page.get_by_test_id("stSidebar").get_by_text("Confounders", exact=True).click()
    page.get_by_text("Confounder directions").wait_for(timeout=120_000)
    wait_idle(page)
    snapshot(page, "confounders")

    page.get_by_test_id("stSidebar").get_by_text("Edits", exact=True).click()
    box = page.get_by_label("Units (ids, comma-separated)")
    box.wait_for(timeout=120_000)
    box.fill(", ".join(str(int(u)) for u in units.tail(3)["unit"]))
    box.press("Enter")
    wait_idle(page)
    page.get_by_text("Evaluate", exact=True).click()
    page.get_by_text("Effect against no edit").wait_for(timeout=180_000)
    wait_idle(page)
    assert page.get_by_text("Slides whose prediction changed").is_visible()
    assert page.get_by_text("Tiles whose prediction changed").first.is_visible()
    snapshot(page, "edits")
    page.get_by_role("button", name="Save as spec").click()
    page.get_by_text("pathosae edit --run").wait_for(timeout=60_000)
    assert (run / "edits" / "my_edit.json").is_file()

    page.get_by_test_id("stSidebar").get_by_text("SAE-ception", exact=True).click()
    page.get_by_text("Last cycle").wait_for(timeout=120_000)
    wait_idle(page)
    snapshot(page, "saeception")


@pytest.mark.parametrize(("env", "fails"), [
    ({}, False), ({"CI": "false"}, False), ({"CI": "true"}, True),
    ({"PATHOSAE_REQUIRE_BROWSER": "1"}, True),
])
def test_a_missing_browser_skips_only_on_a_developer_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], fails: bool
) -> None:
    for name in ("CI", "PATHOSAE_REQUIRE_BROWSER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no_chromium")
    with pytest.raises(pytest.fail.Exception if fails else pytest.skip.Exception, match="no_chromium"):
        check_browser()
