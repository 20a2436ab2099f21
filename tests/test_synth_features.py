"""`pathosae synth-features`: a feature-level cohort in the TRIDENT layout, its planted structure
measured back from the files, and the scorer of flagged units against the planted atoms."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from pathosae.cli import app
from pathosae.config import load_config
from pathosae.confounders.collect import Collected
from pathosae.confounders.truth import truth_scorer
from pathosae.errors import ConfigError
from pathosae.features import FeatureStore, locate_feature_folder, read_foreign_file
from pathosae.pipeline import select_stages
from pathosae.run import RunDir
from pathosae.schema import PATIENT_ID, SLIDE_ID, SPLIT
from pathosae.synth.feature_design import build_dictionary, plan_feature_cohort
from pathosae.synth.feature_groundtruth import FeatureTruth, is_feature_truth
from pathosae.synth.feature_params import CONFOUNDERS, FeatureSynthParams
from pathosae.synth.feature_scorer import ATOM_COSINE, score_units, true_units
from pathosae.synth.features import (
    FEATURE_FOLDER,
    MANIFEST_COLUMNS,
    TILES_PER_CHUNK,
    feature_concepts,
    generate_feature_cohort,
    iter_slide_features,
    manifest_table,
    write_slide_file,
)
from pathosae.workflow import preflight

runner = CliRunner()
SMALL = FeatureSynthParams(tiles=40, dim=64)
PREFERRED = {"normal": "site_A", "tumour": "site_B"}  # label k is confounded with site k


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 slides x about 40 tiles x 64 dims; returns the manifest."""
    return generate_feature_cohort(tmp_path_factory.mktemp("sf") / "cohort", 40, 3, SMALL)


@pytest.fixture(scope="module")
def imported_run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """The cohort through `pathosae cohort` and `pathosae import-features`, as a user runs them."""
    run = tmp_path_factory.mktemp("run") / "run"
    result = runner.invoke(app, ["cohort", "--manifest", str(cohort), "--out", str(run),
                                 "--config", str(cohort.parent / "config.yaml")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["import-features", str(cohort.parent / "trident"),
                                 "--format", "trident", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert "imported 40 slides (64-d) into features/synth" in result.output
    return RunDir(run)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- files ------------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_slides_independent_of_cohort_size(tmp_path: Path) -> None:
    params = FeatureSynthParams(tiles=30, dim=16)
    for name in ("a", "b"):
        generate_feature_cohort(tmp_path / name, 6, 1, params)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first == second and len(first) == 6 + 6  # h5 files, manifest, config, ground truth
    generate_feature_cohort(tmp_path / "c", 6, 2, params)
    name = str(FEATURE_FOLDER / "synth_000000.h5")
    assert _files(tmp_path / "c")[name] != first[name]
    # Slide k is the same whatever the number of slides.
    generate_feature_cohort(tmp_path / "d", 3, 1, params)
    fewer = _files(tmp_path / "d")
    assert all(fewer[str(FEATURE_FOLDER / f"synth_{i:06d}.h5")] == first[str(FEATURE_FOLDER /
               f"synth_{i:06d}.h5")] for i in range(3))


def test_manifest_has_no_path_and_splits_by_patient(cohort: Path) -> None:
    manifest = pd.read_csv(cohort)
    assert list(manifest.columns) == MANIFEST_COLUMNS and "path" not in manifest.columns
    assert set(manifest[SPLIT]) == {"train", "val", "test"}
    per_patient = manifest.groupby(PATIENT_ID)[[SPLIT, "label", "site"]].nunique()
    assert (per_patient == 1).all().all()  # one split, label and site per patient
    truth = pd.read_csv(cohort.parent / "ground_truth" / "slides.csv")
    assert truth[MANIFEST_COLUMNS].equals(manifest)


def test_trident_folder_reads_as_trident(cohort: Path) -> None:
    folder, name = locate_feature_folder("trident", cohort.parent / "trident")
    assert name == "synth" and folder == cohort.parent / FEATURE_FOLDER
    truth = pd.read_csv(cohort.parent / "ground_truth" / "slides.csv")
    for slide_id, n_tiles in zip(truth[SLIDE_ID], truth["n_tiles"], strict=True):
        feats, coords = read_foreign_file(folder / f"{slide_id}.h5")
        assert feats.shape == (n_tiles, 64) and feats.dtype == np.float32
        assert coords.shape == (n_tiles, 2) and len(np.unique(coords, axis=0)) == n_tiles
    assert truth["n_tiles"].between(32, 48).all() and truth["n_tiles"].nunique() > 1


def test_ground_truth_folder(cohort: Path) -> None:
    gt_dir = cohort.parent / "ground_truth"
    truth = FeatureTruth.load(gt_dir)
    assert is_feature_truth(gt_dir) and truth.record["kind"] == "features"
    assert truth.atoms.shape == (64 + 4 * 2 + 2 * 2 + 3 * 2, 64)
    assert truth.directions.shape == (4 + 2 + 3, 64)
    assert np.allclose(np.linalg.norm(truth.atoms, axis=1), 1, atol=1e-5)
    assert truth.record["atoms"]["site"]["site_B"] == [66, 67]
    assert sorted(truth.variables()) == sorted(CONFOUNDERS)
    # Preflight accepts the folder for the stages that read it.
    cfg = load_config(None, {"ground_truth": str(gt_dir)})
    preflight(cfg, select_stages(["confounders"]))
    assert not is_feature_truth(cohort.parent)


# ---- the design and the planted structure ----------------------------------------------------
def _match_rate(table: pd.DataFrame, split: str, sites: dict[str, str]) -> float:
    rows = table[table[SPLIT] == split]
    return float((rows["site"] == rows["label"].map(sites)).mean())


@pytest.mark.parametrize("shift", ["balanced", "reversed"])
def test_label_site_confounding_in_train_broken_in_test(shift: str) -> None:
    params = FeatureSynthParams(tiles=1, dim=8, test_shift=shift)
    table = manifest_table(plan_feature_cohort(800, 0, params))
    expected = 0.8 + 0.2 / 4  # confounding c: P(site = label's site) = c + (1 - c) / n_sites
    assert abs(_match_rate(table, "train", PREFERRED) - expected) < 0.05
    assert abs(_match_rate(table, "val", PREFERRED) - expected) < 0.08
    if shift == "balanced":
        assert abs(_match_rate(table, "test", PREFERRED) - 0.25) < 0.08
    else:
        assert _match_rate(table, "test", {"normal": "site_B", "tumour": "site_A"}) > 0.75
    unconfounded = manifest_table(plan_feature_cohort(800, 0, params.model_copy(
        update={"confounding": 0.0})))
    assert abs(_match_rate(unconfounded, "train", PREFERRED) - 0.25) < 0.06


def test_planted_shifts_and_label_atoms_are_in_the_features(cohort: Path) -> None:
    truth = FeatureTruth.load(cohort.parent / "ground_truth")
    slides = pd.read_csv(cohort.parent / "ground_truth" / "slides.csv")
    store = FeatureStore.from_folder(cohort.parent / FEATURE_FOLDER)
    means = np.stack([store.load(s)[0].mean(axis=0) for s in slides[SLIDE_ID]])
    site_dirs = truth.directions[truth.direction_rows("site")]
    guessed = np.array(truth.record["levels"]["site"])[np.argmax(means @ site_dirs.T, axis=1)]
    assert (guessed == slides["site"].to_numpy()).mean() >= 0.95
    label = truth.record["atoms"]["label"]
    score = means @ (truth.atoms[label["tumour"]].sum(0) - truth.atoms[label["normal"]].sum(0))
    tumour = slides["label"].to_numpy() == "tumour"
    auroc = (score[tumour][:, None] > score[~tumour][None, :]).mean()
    assert auroc > 0.95  # label atoms 3x more frequent on their class's slides


def test_concepts_follow_the_stored_features(cohort: Path) -> None:
    gt_dir = cohort.parent / "ground_truth"
    truth = FeatureTruth.load(gt_dir)
    store = FeatureStore.from_folder(cohort.parent / FEATURE_FOLDER)
    index = store.index()
    concepts = feature_concepts(gt_dir, index)
    assert set(concepts) == {"planted=site", "planted=scanner", "planted=stain_batch",
                             "label_atom=normal", "label_atom=tumour"}
    fired = concepts["planted=site"]
    assert abs(fired.mean() - (1 - 0.7**2)) < 0.05  # two atoms, each firing on 30% of tiles
    feats = np.concatenate([store.load(s)[0] for s in store.slide_ids])
    projection = (feats @ truth.atoms[truth.atom_rows("site")].T).max(axis=1)
    assert projection[fired].mean() - projection[~fired].mean() > 0.5


# ---- the scorer -------------------------------------------------------------------------------
class FakeSAE:
    """An 'SAE' whose decoder rows are given (the scorer reads only W_dec)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.W_dec = torch.from_numpy(np.asarray(rows, dtype=np.float32))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W_dec.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec


def _associations(n_units: int, flagged: dict[str, np.ndarray]) -> pd.DataFrame:
    """A scan table: flagged units get q = 0.001, the others q = 0.9 (and p to match)."""
    frames = []
    for variable, units in flagged.items():
        hit = np.isin(np.arange(n_units), units)
        frames.append(pd.DataFrame({"unit": np.arange(n_units), "variable": variable,
                                    "level": "slide", "p": np.where(hit, 1e-5, 0.5),
                                    "q": np.where(hit, 1e-3, 0.9)}))
    return pd.concat(frames, ignore_index=True)


def _decoder(truth: FeatureTruth, n_random: int = 40) -> np.ndarray:
    """The 8 planted site atoms, then random rows."""
    rng = np.random.default_rng(0)
    return np.vstack([truth.atoms[truth.atom_rows("site")],
                      rng.standard_normal((n_random, truth.atoms.shape[1]))])


def test_scorer_finds_exactly_the_planted_site_atoms(cohort: Path) -> None:
    truth = FeatureTruth.load(cohort.parent / "ground_truth")
    decoder = _decoder(truth)
    site_units = np.arange(8)
    table, summary = score_units(decoder, _associations(len(decoder), {
        "site": site_units, "scanner": site_units}), truth, alpha=0.05)
    assert summary["site"]["precision"] == summary["site"]["recall"] == 1.0
    assert summary["site"]["auroc"] == 1.0 and summary["site"]["n_true"] == 8
    assert summary["scanner"]["precision"] == 0.0 and summary["scanner"]["n_true"] == 0
    rows = table[table["effect"] == "site"]
    assert rows["true_unit"].tolist() == [True] * 8 + [False] * 40
    assert (rows["atom_cosine"].iloc[:8] > 0.999).all()
    assert rows["matched_level"].iloc[:8].tolist() == [f"site_{c}" for c in "AABBCCDD"]
    # Flagging random rows instead: precision 0, recall 0, the ranking below chance.
    _, wrong = score_units(decoder, _associations(len(decoder), {"site": np.arange(8, 20)}),
                           truth, alpha=0.05)
    assert wrong["site"]["precision"] == 0.0 and wrong["site"]["recall"] == 0.0
    assert wrong["site"]["auroc"] < 0.5
    # The findings (half the planted atoms and one random row) and the effects' ranking.
    scan = _associations(len(decoder), {"site": site_units})
    unit = scan["unit"].to_numpy()
    scan = scan.assign(finding=np.isin(unit, [0, 1, 2, 3, 20]),
                       effect_beyond_label=np.where(unit < 8, 0.5 + unit / 100, 0.01))
    table, found = score_units(decoder, scan, truth, alpha=0.05)
    assert found["site"]["findings"] == {"n_findings": 5, "true_positives": 4, "precision": 0.8,
                                         "recall": 0.5}
    assert found["site"]["effect_auroc"] == 1.0
    assert table.loc[table["finding"], "unit"].tolist() == [0, 1, 2, 3, 20]


def test_a_unit_in_the_dense_directions_counts_and_random_units_do_not(cohort: Path) -> None:
    truth = FeatureTruth.load(cohort.parent / "ground_truth")
    dirs = truth.directions[truth.direction_rows("site")]
    rng = np.random.default_rng(1)
    decoder = np.vstack([dirs[0] - dirs[1], rng.standard_normal((200, 64))])
    site = true_units(decoder, truth, "site")
    assert site["true_unit"].iloc[0] and site["span_cosine"].iloc[0] > 0.999
    assert not site["true_unit"].iloc[1:].any()  # random rows: cosines far below the thresholds
    assert site["atom_cosine"].iloc[1:].max() < ATOM_COSINE
    assert not true_units(decoder, truth, "scanner")["true_unit"].iloc[0]


def test_confounders_stage_dispatches_to_the_feature_scorer(cohort: Path, imported_run: RunDir) -> None:
    gt_dir = cohort.parent / "ground_truth"
    truth = FeatureTruth.load(gt_dir)
    cfg = load_config(cohort.parent / "config.yaml", {"ground_truth": str(gt_dir)})
    store = FeatureStore(imported_run, "synth")
    sae = FakeSAE(_decoder(truth))
    slides = pd.read_parquet(imported_run.cohort_path)
    data = Collected(slides=slides, codes={}, embedding_mean=np.zeros((len(slides), 64)),
                     residual_mean=np.zeros((len(slides), 64)),
                     n_tiles=np.array([store.counts()[s] for s in slides[SLIDE_ID]]),
                     tile_features=np.zeros((0, 64)), tile_slide=np.zeros(0, dtype=int))
    score = truth_scorer(imported_run, gt_dir, cfg, store, sae)
    table, summary = score(data, _associations(48, {"site": np.arange(8), "label": np.arange(3)}))
    assert summary["kind"] == "features" and summary["planted_vs_stored_cosine"] == 1.0
    assert summary["site"]["precision"] == summary["site"]["recall"] == 1.0
    assert summary["n_slides"] == 40 and summary["n_tiles"] == store.n_tiles
    assert set(table["effect"]) == {"site"}  # only the confounders the scan tested
    assert {"unit", "effect", "true_unit", "flagged"} <= set(table.columns)


# ---- memory, CLI, settings ------------------------------------------------------------------
def _counted(chunks: Iterator[np.ndarray], sizes: list[int]) -> Iterator[np.ndarray]:
    for chunk in chunks:
        sizes.append(len(chunk))
        yield chunk


def _peak_bytes(params: FeatureSynthParams, n_slides: int, tmp: Path) -> int:
    dictionary = build_dictionary(0, params)
    tracemalloc.start()
    for plan in plan_feature_cohort(n_slides, 0, params):
        sizes: list[int] = []
        write_slide_file(tmp / f"{plan.slide_id}.h5",
                         _counted(iter_slide_features(dictionary, plan, 0, params), sizes),
                         plan.n_tiles, params.dim)
        assert max(sizes) <= TILES_PER_CHUNK and sum(sizes) == plan.n_tiles
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_tiles_or_slides(tmp_path: Path) -> None:
    small = _peak_bytes(FeatureSynthParams(tiles=2 * TILES_PER_CHUNK, tile_jitter=0, dim=128), 1,
                        tmp_path)
    big = _peak_bytes(FeatureSynthParams(tiles=16 * TILES_PER_CHUNK, tile_jitter=0, dim=128), 1,
                      tmp_path)
    total = 16 * TILES_PER_CHUNK * 128 * 4  # bytes of the big slide's features (64 MiB)
    assert big < 1.3 * small and big < total / 3
    many = _peak_bytes(FeatureSynthParams(tiles=2000, dim=64), 24, tmp_path)
    few = _peak_bytes(FeatureSynthParams(tiles=2000, dim=64), 3, tmp_path)
    assert many < 1.3 * few


def test_cli_writes_the_cohort_and_prints_the_next_commands(tmp_path: Path) -> None:
    out = tmp_path / "sf"
    result = runner.invoke(app, ["synth-features", "--out", str(out), "--slides", "8", "--tiles",
                                 "10", "--dim", "16", "--sites", "3", "-p", "noise=0.2"])
    assert result.exit_code == 0, result.output
    assert f"pathosae cohort --manifest {out / 'cohort.csv'}" in result.output
    assert f"pathosae import-features {out / 'trident'} --format trident" in result.output
    truth = FeatureTruth.load(out / "ground_truth")
    assert truth.params.n_sites == 3 and truth.params.noise == 0.2 and truth.params.dim == 16
    bad = runner.invoke(app, ["synth-features", "--out", str(out), "-p", "nosuch=1"])
    assert isinstance(bad.exception, ConfigError) and "nosuch" in str(bad.exception)
    assert runner.invoke(app, ["synth-features", "--out", str(out), "-p", "noise"]).exit_code == 2


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="n_label_atoms must be even"):
        FeatureSynthParams(n_label_atoms=3)
    with pytest.raises(ValidationError, match="extra"):
        FeatureSynthParams.model_validate({"tile": 5})
    with pytest.raises(ConfigError, match="--slides"):
        generate_feature_cohort(Path("unused"), 0)
