"""The verdict per confounder: presence from intervals against chance, location, the fix that
clears both no edit and the random band, and what the report and the summary make of it.

The unit tests build the tables by hand, so every expectation is a number the test chose; the
run tests use the shared small run, with the declared confounders rewritten by the test.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import time

import numpy as np
import pandas as pd
import pytest
from app_fixtures import copy_run, shared_small_run
from PIL import Image

from pathosae.report import build_report
from pathosae.report.build import APPENDIX, RUN_HEADING, VERDICT_HEADING
from pathosae.run import RunDir
from pathosae.summary import run_summary
from pathosae.verdict import (
    STABLE_COSINE,
    RunTables,
    location_of,
    presence_of,
    run_verdicts,
    verdict_from_tables,
)

NAN = float("nan")


# ---- hand-built tables ---------------------------------------------------------------------------
def _row(edit: str, kind: str, bacc: tuple[float, float, float], delta: tuple[float, float],
         mode: str = "applied", auroc: float = 0.9) -> dict[str, object]:
    value, low, high = bacc
    return {"settings_hash": "abc", "edit": edit, "kind": kind, "mode": mode,
            "missing_reason": None, "bacc_shifted": value, "bacc_shifted_low": low,
            "bacc_shifted_high": high, "worst_site_bacc_shifted": value - 0.1,
            "worst_site_bacc_shifted_low": low - 0.1, "worst_site_bacc_shifted_high": high - 0.1,
            "delta_bacc_shifted_low": delta[0], "delta_bacc_shifted_high": delta[1],
            "auroc_normal": auroc, "bacc_normal": auroc - 0.05,
            "collateral_bacc_drop": 0.9 - auroc}


def _effects(*fixes: dict[str, object], draws: tuple[float, ...] = (0.45, 0.5, 0.55, 0.6),
             variable: str = "site") -> pd.DataFrame:
    rows = [_row("no_edit", "baseline", (0.5, 0.4, 0.6), (0.0, 0.0))]
    rows += [_row(f"random_units_{variable}_{i}", "random", (b, b - 0.1, b + 0.1), (b - 0.6, b - 0.4))
             for i, b in enumerate(draws)]
    return pd.DataFrame([*rows, *fixes])


def _tables(effects: pd.DataFrame | None, n_shifted: int = 20) -> RunTables:
    return RunTables(confounders=["site", "scanner"], effects=effects, n_shifted_slides=n_shifted)


def test_a_fix_whose_interval_clears_no_edit_and_the_random_band_is_better_and_best() -> None:
    clears = _row("project_out_site", "edit", (0.8, 0.72, 0.88), (0.1, 0.45), auroc=0.85)
    only_no_edit = _row("leace_site", "baseline", (0.7, 0.58, 0.82), (0.05, 0.35))
    verdict = verdict_from_tables("site", _tables(_effects(clears, only_no_edit)))
    by_name = {f.name: f for f in verdict.fixes}
    assert by_name["project_out_site"].better
    # its paired change clears 0, but its lower bound 0.58 lies inside the band's top (0.6..)
    assert not by_name["leace_site"].better
    assert verdict.best is not None and verdict.best.name == "project_out_site"
    assert verdict.outcome == "fix" and verdict.slides_needed is None
    assert verdict.best.auroc_normal_cost == pytest.approx(0.9 - 0.85)
    assert verdict.random_band is not None
    assert verdict.random_band == pytest.approx(tuple(np.quantile([0.45, 0.5, 0.55, 0.6],
                                                                  [0.025, 0.975])))
    assert "project out the site direction" in verdict.advice
    assert "too small" not in verdict.advice


def test_a_fix_that_does_not_clear_both_is_not_better_and_the_advice_says_too_small() -> None:
    # beats no edit on the point estimate (0.7 against 0.5) and the band's top (0.6), but its
    # paired change's interval reaches below 0 and its own interval into the band
    close = _row("project_out_site", "edit", (0.7, 0.55, 0.85), (-0.05, 0.45))
    worse = _row("ablate_flagged_site", "edit", (0.6, 0.5, 0.7), (-0.1, 0.3))
    draws = (0.45, 0.6, 0.6, 0.6)  # the band's upper end: exactly 0.6
    verdict = verdict_from_tables("site", _tables(_effects(close, worse, draws=draws), n_shifted=20))
    assert not any(f.better for f in verdict.fixes)
    assert verdict.best is not None and verdict.best.name == "project_out_site"
    assert verdict.outcome == "too_small"
    # 1/sqrt(n): against no edit 20·(0.25/0.2)² = 31.25, against the band 20·(0.15/0.1)² = 45
    assert verdict.slides_needed == 45
    assert "too small to tell" in verdict.advice and "45" in verdict.advice
    # more slides make the same margins decidable: the number follows the test's size
    again = verdict_from_tables("site", _tables(_effects(close, worse, draws=draws), n_shifted=40))
    assert again.slides_needed == 90


def test_no_fix_better_than_no_edit_even_on_its_point_estimate_is_no_gain() -> None:
    flat = _row("project_out_site", "edit", (0.5, 0.4, 0.6), (-0.1, 0.1))
    verdict = verdict_from_tables("site", _tables(_effects(flat)))
    assert verdict.outcome == "no_gain" and verdict.slides_needed is None
    assert "too small" not in verdict.advice and "No fix did better" in verdict.advice


def test_without_a_better_fix_one_clearing_both_on_its_point_estimate_is_preferred() -> None:
    # applied: random draws reach 0.95, so LEACE's 0.85 (the highest of all) is no better than
    # random edits; retrained: project out's 0.62 clears no edit (0.4) and the draws (<= 0.45)
    # on its point estimate, though not with its interval
    in_band = _row("leace_site", "baseline", (0.85, 0.7, 0.95), (0.1, 0.6))
    retrained = [_row("no_edit", "baseline", (0.4, 0.3, 0.5), (0.0, 0.0), mode="retrained"),
                 _row("random_units_site_0", "random", (0.4, 0.3, 0.5), (-0.1, 0.1), "retrained"),
                 _row("random_units_site_1", "random", (0.45, 0.35, 0.55), (-0.1, 0.1), "retrained")]
    clearing = _row("project_out_site", "edit", (0.62, 0.42, 0.8), (-0.05, 0.45), "retrained")
    draws = (0.45, 0.95, 0.95, 0.95)
    verdict = verdict_from_tables("site", _tables(_effects(in_band, *retrained, clearing,
                                                           draws=draws)))
    assert not any(f.better for f in verdict.fixes)
    assert verdict.best is not None and (verdict.best.name, verdict.best.mode) == (
        "project_out_site", "retrained")
    assert verdict.outcome == "too_small" and verdict.slides_needed is not None
    # without it, LEACE is the best candidate, and the advice blames random edits, not no edit
    verdict = verdict_from_tables("site", _tables(_effects(in_band, *retrained, draws=draws)))
    assert verdict.best is not None and verdict.best.name == "leace_site"
    assert verdict.outcome == "no_gain" and verdict.slides_needed is None
    assert "random edits" in verdict.advice and "0.95" in verdict.advice


def test_a_random_draw_is_never_the_best_fix() -> None:
    # draws far above every fix, with intervals that would clear everything
    plain = _row("project_out_site", "edit", (0.55, 0.45, 0.65), (-0.05, 0.15))
    effects = _effects(plain, draws=(0.95, 0.97, 0.99))
    lucky = _row("random_units_site_9", "edit", (1.0, 0.99, 1.0), (0.4, 0.6))  # kind mislabelled
    verdict = verdict_from_tables("site", _tables(pd.concat([effects, pd.DataFrame([lucky])])))
    assert verdict.best is not None and verdict.best.name == "project_out_site"
    assert not any(f.name.startswith("random_units") for f in verdict.fixes)
    assert verdict.random_band is not None and verdict.random_band[1] > 0.95


def test_fixes_belong_to_their_confounder_and_modes_are_judged_separately() -> None:
    rows = [_row("project_out_scanner", "edit", (0.9, 0.85, 0.95), (0.3, 0.5)),
            _row("combat", "baseline", (0.52, 0.42, 0.62), (-0.05, 0.1)),
            _row("no_edit", "baseline", (0.3, 0.2, 0.4), (0.0, 0.0), mode="retrained"),
            _row("project_out_site", "edit", (0.62, 0.5, 0.7), (0.2, 0.4), mode="retrained")]
    verdict = verdict_from_tables("site", _tables(_effects(*rows)))
    assert {(f.name, f.mode) for f in verdict.fixes} == {("combat", "applied"),
                                                         ("project_out_site", "retrained")}
    # retrained: no draws in that mode, so only the paired change against its own no edit counts
    retrained = next(f for f in verdict.fixes if f.mode == "retrained")
    assert retrained.better and verdict.best == retrained
    assert verdict.no_edit is not None and verdict.no_edit.mode == "retrained"
    assert "retrained" not in verdict.random_band_by_mode


def test_without_intervals_nothing_is_better_and_the_advice_says_so() -> None:
    old = _effects(_row("project_out_site", "edit", (0.9, NAN, NAN), (NAN, NAN)))
    old = old.drop(columns=[c for c in old.columns if c.endswith(("_low", "_high"))])
    verdict = verdict_from_tables("site", _tables(old))
    assert verdict.best is not None and not verdict.best.better
    assert verdict.outcome == "no_intervals" and "no confidence intervals" in verdict.advice


def _leakage(low: float, chance_high: float, variable: str = "site") -> pd.DataFrame:
    return pd.DataFrame([
        {"variable": variable, "representation": "embedding", "scheme": "patient_folds",
         "subset": "all", "auroc": 0.86, "auroc_low": low, "auroc_high": 0.95,
         "chance_auroc": 0.5, "chance_auroc_high": chance_high},
        # other rows of the same variable must not be read
        {"variable": variable, "representation": "sae_codes", "scheme": "patient_folds",
         "subset": "all", "auroc": 0.99, "auroc_low": 0.98, "auroc_high": 1.0,
         "chance_auroc": 0.5, "chance_auroc_high": 0.2},
    ])


def test_presence_is_the_embedding_probes_interval_against_its_chance_level() -> None:
    present = presence_of("site", _leakage(0.74, 0.62))
    assert present.present is True
    assert present.text.startswith("Site is present in the embeddings: probe AUROC 0.86 "
                                   "(95% CI 0.74–0.95) against a chance level of ≤0.62")
    absent = presence_of("site", _leakage(0.55, 0.62))
    assert absent.present is False and "not detectable" in absent.text
    assert presence_of("site", _leakage(NAN, 0.62)).present is None
    assert presence_of("site", _leakage(0.74, NAN)).present is None
    missing = presence_of("scanner", _leakage(0.74, 0.62))  # no row for scanner
    assert missing.present is None and "no embedding probe" in missing.text
    assert presence_of("site", None).present is None


def _associations(stable: list[bool] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({
        "unit": [3, 5, 7, 3, 9], "variable": ["site"] * 4 + ["scanner"],
        "level": ["slide", "slide", "slide", "patient", "slide"],
        "q": [0.01, 0.001, 0.2, 0.0001, 0.01], "flagged": [True, True, False, True, True],
    })
    return frame if stable is None else frame.assign(stable=stable)


def test_location_follows_unit_stability_or_the_seed_cosine() -> None:
    present = presence_of("site", _leakage(0.74, 0.62))
    low = location_of("site", present, _associations(), seed_cosine=STABLE_COSINE - 0.3)
    assert low.kind == "directions" and low.n_flagged_units == 2
    assert low.units == (5, 3)  # slide level, flagged, smallest q first
    assert "not reproducible" in low.text
    high = location_of("site", present, _associations(), seed_cosine=STABLE_COSINE + 0.1)
    assert high.kind == "units" and high.n_stable_units is None
    assert location_of("site", present, _associations(), None).kind == "unknown"
    stable = location_of("site", present, _associations([False, True, False, False, True]), 0.1)
    assert stable.kind == "units" and stable.n_stable_units == 1  # the column wins over cosine
    none_stable = location_of("site", present, _associations([False] * 5), 0.95)
    assert none_stable.kind == "directions" and none_stable.n_stable_units == 0
    nothing = location_of("label", present, _associations(), 0.9)
    assert nothing.kind == "directions" and nothing.n_flagged_units == 0


# ---- the shared small run -------------------------------------------------------------------------
DECLARED = ["scanner", "stain_batch", "site"]  # not the run's own (site, scanner)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A copy of the shared small run, its declared confounders rewritten, the report stage
    "running" (as when the pipeline builds the report)."""
    source = shared_small_run(tmp_path_factory.getbasetemp())
    run = RunDir(copy_run(source, tmp_path_factory.mktemp("verdict") / "run"))
    state = run.read_state()
    state["config"]["cohort"]["confounders"] = DECLARED
    run.write_state(state)
    run.set_stage("report", status="running", started=time.time(), duration_s=None)
    return run


@pytest.mark.slow
def test_run_verdicts_one_per_declared_confounder(small_run: RunDir) -> None:
    verdicts = run_verdicts(small_run)
    assert [v.confounder for v in verdicts] == DECLARED
    effects = pd.read_parquet(small_run.root / "edits" / "effects.parquet")
    for v in verdicts:
        names = {f.name for f in v.fixes}
        expected = {e for e in effects["edit"] if e.endswith(f"_{v.confounder}")
                    and not e.startswith("random_units")} | ({"combat", "stain_normalisation"}
                                                            & set(effects["edit"]))
        assert names == expected
        assert v.best is None or not v.best.name.startswith("random_units")
    # no probe was fitted for a confounder the run did not declare when it ran
    assert verdicts[1].presence.present is None


@pytest.mark.slow
def test_report_opens_with_the_verdict_and_keeps_hashes_in_the_appendix(small_run: RunDir) -> None:
    page = build_report(small_run).read_text(encoding="utf-8")
    first_h2 = re.search(r"<h2[^>]*>.*?</h2>", page)
    assert first_h2 is not None and first_h2.group(0) == VERDICT_HEADING
    start = page.index(VERDICT_HEADING)
    verdict_section = page[start:page.index("<h2", start + len(VERDICT_HEADING))]
    assert re.findall(r"<h3>(.*?)</h3>", verdict_section) == DECLARED
    # forest plots: real PNGs, inline, inside the verdict section
    images = re.findall(r"<img src='data:image/png;base64,([^']+)'", verdict_section)
    assert images
    with Image.open(io.BytesIO(base64.b64decode(images[0]))) as img:
        assert img.format == "PNG" and img.size[0] > 300
    # settings hashes: in the tables the stages wrote, shown only after the appendix marker
    effects = pd.read_parquet(small_run.root / "edits" / "effects.parquet")
    assert "settings_hash" in effects.columns
    cut = page.index(APPENDIX)
    assert "settings_hash" not in page[:cut]
    assert str(effects["settings_hash"].iloc[0]) in page[cut:]
    assert "shifted-test balanced accuracy (95% CI)" in page[:cut]
    # the stage table: every stage done, the report (running while it writes) shown done
    table = page[page.index(RUN_HEADING):page.index("</table>", page.index(RUN_HEADING))]
    rows = [re.findall(r"<td>(.*?)</td>", r, re.S) for r in re.findall(r"<tr>(.*?)</tr>",
                                                                      table, re.S)]
    rows = [r for r in rows if r]
    state = json.loads((small_run.root / "run.json").read_text())
    assert [r[0] for r in rows] == [s for s in _stage_order() if s in state["stages"]]
    assert all(r[1].startswith("done") for r in rows)
    assert rows[-1][:2] == ["report", "done (this report)"]
    assert all(math.isfinite(float(r[2])) for r in rows)


def _stage_order() -> list[str]:
    from pathosae.pipeline import STAGE_NAMES

    return list(STAGE_NAMES)


@pytest.mark.slow
def test_summary_has_one_verdict_line_per_declared_confounder(small_run: RunDir) -> None:
    lines = run_summary(small_run)
    verdict_lines = [line for line in lines if re.match(rf"({'|'.join(DECLARED)}): ", line)]
    assert [line.split(":")[0] for line in verdict_lines] == DECLARED
    assert not any(line.startswith("best edit") for line in lines)
    site = verdict_lines[DECLARED.index("site")]
    assert re.search(r"probe AUROC \d\.\d\d \(95% CI \d\.\d\d–\d\.\d\d\)", site)

