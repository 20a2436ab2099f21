"""The Streamlit app on a small real run: every page through AppTest, plus its data access."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from app_fixtures import shared_small_run
from streamlit.testing.v1 import AppTest

from pathosae.app import AccessError, PathGuard, RunView
from pathosae.errors import PathosaeError

APP = Path(__file__).resolve().parent.parent / "apps" / "pathosae_app.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_small_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def partial_run(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run where only the cohort stage has run."""
    root = tmp_path_factory.mktemp("partial") / "run"
    root.mkdir()
    for name in ("cohort.parquet", "run.json"):
        shutil.copy(small_run / name, root / name)
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


def test_units_page_shows_a_unit_with_tiles_stats_and_tag(small_run: Path) -> None:
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


def test_edits_page_measures_and_saves_an_edit(small_run: Path) -> None:
    from pathosae.edit.spec import EditSpec

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


def test_edits_page_edits_the_adapter_layer_of_an_saeception_model(small_run: Path) -> None:
    from pathosae.app.edits import adapter_models
    from pathosae.edit.spec import EditSpec

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


# ---- data access ------------------------------------------------------------------------------
def test_path_guard_refuses_files_outside_the_run(small_run: Path, tmp_path: Path) -> None:
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
    try:
        with pytest.raises(AccessError):
            view.guard.run_file("evil_link", "passwd")
    finally:
        (small_run / "evil_link").unlink()
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


def test_tags_are_validated_and_saved_atomically(small_run: Path) -> None:
    view = RunView(small_run)
    view.tags.set("topk", 3, "phenotype", "glands")
    assert RunView(small_run).tags.get("topk", 3)["note"] == "glands"
    with pytest.raises(PathosaeError, match="unknown tag"):
        view.tags.set("topk", 3, "nonsense")
    view.tags.set("topk", 3, None)
    assert view.tags.get("topk", 3) is None
