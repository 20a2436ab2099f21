"""The Streamlit app on a small real run: every page through AppTest, plus its data access."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import copy_run, shared_small_run
from streamlit.testing.v1 import AppTest

from pathosae.app import AccessError, PathGuard, RunView
from pathosae.errors import PathosaeError

APP = Path(__file__).resolve().parent.parent / "apps" / "pathosae_app.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's shared small run: only ever copied, never opened by a test."""
    return shared_small_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def small_run(source_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the run, for the tests that only read it."""
    return copy_run(source_run, tmp_path_factory.mktemp("app_read") / "run")


@pytest.fixture()
def own_run(source_run: Path, tmp_path: Path) -> Path:
    """A copy of the run for one test that writes into it (tags, saved specs, links)."""
    return copy_run(source_run, tmp_path / "run")


@pytest.fixture(scope="module")
def partial_run(source_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run where only the cohort stage has run."""
    root = tmp_path_factory.mktemp("partial") / "run"
    root.mkdir()
    for name in ("cohort.parquet", "run.json"):
        shutil.copy(source_run / name, root / name)
    return root


def open_page(run: Path, page: str, **state: object) -> AppTest:
    os.environ["PATHOSAE_APP_RUN"] = str(run)
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.session_state["page"] = page
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def texts(at: AppTest) -> str:
    parts = [*at.header, *at.subheader, *at.markdown, *at.caption, *at.warning, *at.info,
             *at.success, *at.code]
    return "\n".join(str(p.value) for p in parts)


def frame(at: AppTest, *columns: str, last: bool = False):
    """The first (or last) table on the page holding all ``columns`` (columns or index names)."""
    found = []
    for element in at.dataframe:
        value = element.value
        if set(columns) <= {*map(str, value.columns), *map(str, value.index.names)}:
            found.append(value)
    assert found, f"no table with columns {columns} on the page"
    return found[-1] if last else found[0]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


# ---- pages ------------------------------------------------------------------------------------
def test_cohort_page_shows_slides_crosstab_and_qc(small_run: Path) -> None:
    import pandas as pd

    at = open_page(small_run, "Cohort")
    assert_clean(at)
    cohort = pd.read_parquet(small_run / "cohort.parquet")
    assert f"{len(cohort)} slides" in texts(at)
    table = frame(at, "slide_id", "patient_id")
    assert sorted(table["slide_id"]) == sorted(cohort["slide_id"])
    assert "path" not in table.columns
    xtab = frame(at, "total")
    assert int(xtab.loc["total", "total"]) == len(cohort)
    assert len(at.get("image")) >= 1  # QC thumbnails


def test_units_page_shows_a_unit_with_tiles_stats_and_tag(own_run: Path) -> None:
    small_run = own_run
    view = RunView(small_run)
    acts = view.activations(view.default_sae())
    unit = int(acts.units.sort_values("frequency").iloc[-1]["unit"])
    at = open_page(small_run, "Units", unit=unit)
    assert_clean(at)
    shown = texts(at)
    assert f"Unit {unit}" in shown
    assert "Top-activating tiles" in shown and "Similar units" in shown
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tiles firing"] == f"{int(acts.units.iloc[unit]['n_tiles']):,}"
    assoc = frame(at, "variable", "aggregation", "q")
    assert set(assoc["variable"]) >= {"site", "label"}
    similar = frame(at, "unit", "cosine")
    assert unit not in set(similar["unit"]) and len(similar) == 10
    assert len(at.get("image")) >= 2  # tile grids and the slide heatmap
    at.radio[0].set_value("confounder")
    at.button[0].click()
    at.run()
    assert_clean(at)
    assert view.tags.get(view.default_sae(), unit)["tag"] == "confounder"


def test_units_sort_by_label_association_lists_smallest_q_first(small_run: Path) -> None:
    at = open_page(small_run, "Units", unit_sort="label association")
    assert_clean(at)
    listed = frame(at, "unit", "frequency", "tag")
    q = listed["q_label"].dropna().to_numpy()
    assert len(q) and np.all(np.diff(q) >= 0)


def test_confounders_page_shows_heatmap_leakage_directions(small_run: Path) -> None:
    at = open_page(small_run, "Confounders")
    assert_clean(at)
    heat = frame(at, "site", "scanner")
    assert {"site", "scanner"} <= set(heat.columns)
    leak = frame(at, "embedding", "sae_codes", "scheme")
    assert {"embedding", "sae_codes", "sae_residual"} <= set(leak.columns)
    directions = frame(at, "tensor", "meaning")
    assert "mean_difference" in set(directions["tensor"])
    assert "flagged units" in texts(at)


def test_edits_page_measures_and_saves_an_edit(own_run: Path) -> None:
    from pathosae.edit.spec import EditSpec

    small_run = own_run
    view = RunView(small_run)
    acts = view.activations(view.default_sae())
    units = acts.units.sort_values("frequency").tail(3)["unit"].tolist()
    at = open_page(small_run, "Edits")
    assert_clean(at)
    at.text_input(key="edit_units").input(", ".join(map(str, units)))
    at.text_input(key="edit_name").input("app_test_ablate")
    at.toggle(key="edit_go").set_value(True)
    at.run()
    assert_clean(at)
    effects = frame(at, "edit", "flip_rate", "bacc_shifted", last=True)
    assert list(effects["edit"]) == ["no_edit", "app_test_ablate"]
    assert effects.loc[0, "flip_rate"] == 0.0
    assert "Tiles whose prediction changed" in texts(at)
    at.button(key="save_spec").click()
    at.run()
    assert_clean(at)
    spec = EditSpec.from_file(small_run / "edits" / "app_test_ablate.json")
    assert spec.ops[0].op == "ablate" and sorted(spec.ops[0].units) == sorted(units)
    assert "pathosae edit --run" in texts(at)


def test_edits_page_projects_out_a_direction(small_run: Path) -> None:
    at = open_page(small_run, "Edits", edit_op="project out")
    at.toggle(key="edit_go").set_value(True)
    at.run()
    assert_clean(at)
    effects = frame(at, "edit", "flip_rate", "bacc_shifted", last=True)
    assert len(effects) == 2 and "site_leakage" in effects.columns


def test_edits_page_edits_the_adapter_layer_of_an_saeception_model(own_run: Path) -> None:
    from pathosae.app.edits import adapter_models
    from pathosae.edit.spec import EditSpec

    small_run = own_run
    models = adapter_models(RunView(small_run))
    assert models and all(m.startswith("cycle_") for m in models)
    at = open_page(small_run, "Edits")
    at.text_input(key="adapter_units").input("0, 1, 2")
    at.text_input(key="adapter_name").input("app_adapter_ablate")
    at.toggle(key="adapter_go").set_value(True)
    at.run()
    assert_clean(at)
    effects = frame(at, "edit", "flip_rate", "bacc_shifted", last=True)
    assert list(effects["edit"]) == ["no_edit", "app_adapter_ablate"]
    at.button(key="adapter_save").click()
    at.run()
    assert_clean(at)
    spec = EditSpec.from_file(small_run / "edits" / "app_adapter_ablate.json")
    assert spec.layer == "adapter" and spec.model == models[-1]
    assert spec.ops[0].units == [0, 1, 2]


def test_saeception_page_shows_cycles_and_controls(small_run: Path) -> None:
    at = open_page(small_run, "SAE-ception")
    assert_clean(at)
    assert "control: same training, no auxiliary loss" in texts(at)
    summary = frame(at, "variant", "bacc_shifted mean")
    assert {"no_aux", "plain"} <= set(summary["variant"])


@pytest.mark.parametrize("page", ["Cohort", "Units", "Confounders", "Edits", "SAE-ception"])
def test_missing_stages_show_the_command_not_a_traceback(partial_run: Path, page: str) -> None:
    at = open_page(partial_run, page)
    assert not at.exception, [e.value for e in at.exception]
    if page != "Cohort":
        assert at.warning, "a missing stage must be named"
        assert any("pathosae" in c.value for c in at.code)


def test_no_run_given_is_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATHOSAE_APP_RUN", str(tmp_path / "nope"))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "does not exist" in at.error[0].value


# ---- verdict page -----------------------------------------------------------------------------
def hand_verdicts(confounders: list[str]) -> list:
    """Verdicts built by hand: one per confounder; the first is present and fixed by ablating
    its units, the others not detected and too small to tell."""
    from pathosae.verdict import Fix, Interval, Location, Presence, Verdict

    def fix(name: str, kind: str, value: float, better: bool = False) -> Fix:
        return Fix(name, kind, "applied", Interval(value, value - 0.08, value + 0.06),
                   Interval(value - 0.1, value - 0.2, value - 0.02),
                   Interval(value - 0.70, value - 0.74, value - 0.66), 0.012, better)

    out = []
    for i, name in enumerate(confounders):
        no_edit = fix("no_edit", "edit", 0.70)
        best = fix(f"ablate_flagged_{name}", "edit", 0.81, better=i == 0)
        fixes = [best, fix(f"leace_{name}", "baseline", 0.74), fix("combat", "baseline", 0.72)]
        out.append(Verdict(
            confounder=name,
            presence=Presence(Interval(0.86, 0.74, 0.95), 0.62, i == 0, f"{name}: probe text"),
            location=Location("units", 3, 2, f"{name}: location text", units=(1, 2, 3)),
            no_edit=no_edit, best=best, random_band=(0.68, 0.73), fixes=fixes,
            advice=f"Advice on {name}.", slides_needed=None if i == 0 else 120,
            outcome="fix" if i == 0 else "too_small", no_edit_by_mode={"applied": no_edit},
            random_band_by_mode={"applied": (0.68, 0.73)},
        ))
    return out


@pytest.fixture()
def fake_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_verdicts replaced by :func:`hand_verdicts` on the run's declared confounders."""
    import pathosae.verdict

    def fake(run: pathosae.verdict.RunDir) -> list:
        return hand_verdicts(list(RunView(run.root).config.cohort.confounders))

    monkeypatch.setattr(pathosae.verdict, "run_verdicts", fake)


def open_default(run: Path) -> AppTest:
    """The app as a fresh session opens it: no page chosen."""
    os.environ["PATHOSAE_APP_RUN"] = str(run)
    return AppTest.from_file(str(APP), default_timeout=180).run()


def test_verdict_is_the_first_page_and_names_each_confounder(small_run: Path) -> None:
    at = open_default(small_run)
    assert_clean(at)
    assert at.session_state["page"] == "Verdict"
    assert at.header[0].value == "Verdict"
    confounders = list(RunView(small_run).config.cohort.confounders)
    assert confounders
    assert [s.value for s in at.main.subheader] == confounders
    summary = frame(at, "confounder", "present", "best fix")
    assert list(summary["confounder"]) == confounders
    assert [m.label for m in at.metric] == ["Present?", "Where it lives", "Best fix"] * \
        len(confounders)
    assert "95% CI" in texts(at) and "probe AUROC" in texts(at)
    assert at.get("image"), "a forest plot of the fixes"


def test_verdict_page_shows_intervals_forest_plot_and_baselines(
    small_run: Path, fake_verdicts: None
) -> None:
    at = open_default(small_run)
    assert_clean(at)
    shown = texts(at)
    assert "probe AUROC 0.86 (95% CI 0.74–0.95); chance level up to 0.62" in shown
    assert "balanced accuracy 0.81 (95% CI 0.73–0.87); change against no edit " \
        "+0.11 (95% CI +0.07–+0.15); normal-test AUROC cost +0.012" in shown
    assert "**best baseline**, LEACE (site) (applied): balanced accuracy 0.74" in shown
    assert "**no edit** (applied): balanced accuracy 0.70 (95% CI 0.62–0.76)" in shown
    assert "random units of the same size: balanced accuracy 0.68–0.73" in shown
    assert "Advice on site." in shown
    metrics = [(m.label, m.value) for m in at.metric]
    assert metrics[:3] == [("Present?", "present"), ("Where it lives", "stable SAE units"),
                           ("Best fix", "ablate the flagged site units")]
    assert ("Present?", "not detected") in metrics
    assert ("Best fix", "too few slides to tell") in metrics
    fixes = frame(at, "fix", "shifted balanced accuracy", "clears no edit and random")
    assert list(fixes["edit"]) == ["ablate_flagged_site", "leace_site", "combat", "no_edit"]
    assert list(fixes["clears no edit and random"]) == ["yes", "no", "no", ""]
    assert len(at.get("image")) == len(metrics) // 3  # a forest plot per confounder


def test_verdict_links_open_the_units_and_edits_pages(small_run: Path, fake_verdicts: None) -> None:
    at = open_default(small_run)
    at.button(key="verdict_unit_site_2").click()
    at.run()
    assert_clean(at)
    assert at.session_state["page"] == "Units"
    assert at.session_state["unit"] == 2
    assert "Unit 2" in texts(at)
    at = open_default(small_run)
    at.button(key="verdict_edit_site").click()
    at.run()
    assert_clean(at)
    assert at.session_state["page"] == "Edits"
    assert at.header[0].value == "Edits"
    assert at.session_state["edit_op"] == "ablate"  # the saved spec's units, else the verdict's
    assert at.text_input(key="edit_units").value


def test_verdict_page_without_the_edit_stage_names_it(own_run: Path) -> None:
    shutil.rmtree(own_run / "edits")
    at = open_page(own_run, "Verdict")
    assert not at.exception, [e.value for e in at.exception]
    assert any("edit" in w.value for w in at.warning)
    assert any("pathosae edit --run" in c.value for c in at.code)
    assert [s.value for s in at.main.subheader] == \
        list(RunView(own_run).config.cohort.confounders)  # presence and location still shown


def test_verdict_page_before_the_confounders_stage_names_it(partial_run: Path) -> None:
    at = open_page(partial_run, "Verdict")
    assert not at.exception, [e.value for e in at.exception]
    assert any("confounders" in w.value for w in at.warning)
    assert any("--stages confounders" in c.value for c in at.code)


def test_verdict_view_tables_and_headlines() -> None:
    from dataclasses import replace

    from pathosae.app.verdict_view import (
        MAX_UNIT_LINKS,
        best_word,
        fixes_table,
        summary_table,
        unit_links,
    )
    from pathosae.verdict import Location

    site, scanner = hand_verdicts(["site", "scanner"])
    table = fixes_table(site)
    assert list(table["edit"]) == ["ablate_flagged_site", "leace_site", "combat", "no_edit"]
    assert "mode" not in table and "not measured" not in table  # one mode, all measured
    assert best_word(site) == "ablate the flagged site units"
    assert best_word(scanner) == "too few slides to tell"
    assert best_word(replace(site, best=None, outcome="not_measured")) == "not measured yet"
    summary = summary_table([site, scanner])
    assert list(summary["present"]) == ["present", "not detected"]
    many = replace(site, location=Location("units", 20, 20, "", units=tuple(range(20))))
    assert unit_links(many) == list(range(MAX_UNIT_LINKS))
    assert unit_links(replace(site, location=Location("unknown", 0, None, ""))) == []


# ---- data access ------------------------------------------------------------------------------
def test_path_guard_refuses_files_outside_the_run(own_run: Path, tmp_path: Path) -> None:
    small_run = own_run
    view = RunView(small_run)
    with pytest.raises(AccessError):
        view.guard.run_file("..", "..", "etc", "passwd")
    with pytest.raises(AccessError):
        view.guard.run_file("/etc/passwd")
    with pytest.raises(AccessError):
        view.guard.slide_file("/etc/passwd")
    with pytest.raises(PathosaeError):
        view.qc_image("../../../etc/passwd")
    (small_run / "evil_link").symlink_to("/etc")
    with pytest.raises(AccessError):
        view.guard.run_file("evil_link", "passwd")
    slide = view.cohort["path"].iloc[0]
    assert view.guard.slide_file(slide) == Path(slide).resolve()
    guard = PathGuard(tmp_path, [])
    assert guard.run_file("a", "b.json") == (tmp_path / "a" / "b.json").resolve()


def test_unit_cache_matches_dense_codes_and_is_reused(small_run: Path) -> None:
    import torch

    from pathosae.features import FeatureStore

    view = RunView(small_run)
    sae_name = view.default_sae()
    acts = view.activations(sae_name)
    matrix = FeatureStore(view.run, view.features_name(sae_name)).matrix()
    with torch.no_grad():
        dense = view.load_sae(sae_name).encode(torch.from_numpy(np.array(matrix))).numpy()
    unit = int(acts.units.sort_values("frequency").iloc[-1]["unit"])
    rows, values = acts.unit(unit)
    expected = np.flatnonzero(dense[:, unit] > 0)
    assert np.array_equal(rows, expected)
    assert np.allclose(values, dense[expected, unit], atol=1e-5)
    assert acts.frequency(unit) == pytest.approx(len(expected) / len(dense))
    _, top_values = acts.top_rows(unit, 3)
    assert top_values[0] == pytest.approx(dense[:, unit].max(), rel=1e-5)
    stamp = (view.cache_dir(sae_name) / "meta.json").stat().st_mtime_ns
    RunView(small_run).activations(sae_name)
    assert (view.cache_dir(sae_name) / "meta.json").stat().st_mtime_ns == stamp


def test_tags_are_validated_and_saved_atomically(own_run: Path) -> None:
    small_run = own_run
    view = RunView(small_run)
    view.tags.set("topk", 3, "phenotype", "glands")
    assert RunView(small_run).tags.get("topk", 3)["note"] == "glands"
    with pytest.raises(PathosaeError, match="unknown tag"):
        view.tags.set("topk", 3, "nonsense")
    view.tags.set("topk", 3, None)
    assert view.tags.get("topk", 3) is None
