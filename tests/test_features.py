"""FeatureStore (per-slide loads, index, memory-mapped matrix) and TRIDENT/CLAM import."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from embed_helpers import write_cohort

from pathosae.embedding.h5files import feature_file_state, write_feature_file
from pathosae.errors import PathosaeError
from pathosae.features import MATRIX_NAME, FeatureStore, import_features
from pathosae.run import RunDir

DIM = 16


@pytest.fixture()
def store_run(tmp_path):
    """A run with 3 cohort slides; features for two of them (the third failed to embed)."""
    run = RunDir(tmp_path / "run")
    write_cohort(run, {s: tmp_path / f"{s}.svs" for s in ("s1", "s2", "s3")})
    rng = np.random.default_rng(0)
    arrays = {}
    for slide_id, n in (("s2", 5), ("s1", 3)):  # written out of cohort order on purpose
        feats = rng.normal(size=(n, DIM)).astype(np.float32)
        coords = rng.integers(0, 10_000, size=(n, 2))
        write_feature_file(run.features_path("enc", slide_id), feats, coords,
                           {"encoder": "enc", "settings_hash": "x"})
        arrays[slide_id] = (feats, coords)
    return run, arrays


def test_store_reads_in_cohort_order(store_run):
    run, arrays = store_run
    store = FeatureStore(run, "enc")
    assert store.slide_ids == ["s1", "s2"] and store.missing == ["s3"]
    assert store.dim == DIM and store.n_tiles == 8
    feats, coords = store.load("s2")
    np.testing.assert_array_equal(feats, arrays["s2"][0])
    np.testing.assert_array_equal(coords, arrays["s2"][1])

    index = store.index()
    assert list(index["row"]) == list(range(8))
    assert list(index["slide_id"]) == ["s1"] * 3 + ["s2"] * 5
    assert list(index["tile"]) == [0, 1, 2, 0, 1, 2, 3, 4]
    np.testing.assert_array_equal(index[["x", "y"]].to_numpy()[3:], arrays["s2"][1])
    assert {"split", "patient_id", "label", "site"} <= set(index.columns)
    assert "path" not in index.columns
    assert index.loc[index.slide_id == "s2", "site"].unique().tolist() == ["site1"]


def test_matrix_reads_rows_from_the_slide_files_without_a_copy(store_run):
    run, arrays = store_run
    folder = run.features_dir("enc")
    (folder / MATRIX_NAME).write_bytes(b"stale copy of an older version")
    store = FeatureStore(run, "enc")
    matrix = store.matrix()
    whole = np.concatenate([arrays["s1"][0], arrays["s2"][0]])
    assert matrix.shape == (8, DIM) and matrix.dtype == np.float32 and len(matrix) == 8
    np.testing.assert_array_equal(matrix[:], whole)
    np.testing.assert_array_equal(np.asarray(matrix), whole)
    np.testing.assert_array_equal(matrix[2:6], whole[2:6])  # a slice across two slides
    picks = np.array([7, 0, 3, 3, 5])  # any order, repeats, both slides
    np.testing.assert_array_equal(matrix[picks], whole[picks])
    np.testing.assert_array_equal(matrix[4], whole[4])
    with pytest.raises(IndexError):
        matrix[np.array([8])]
    assert not (folder / MATRIX_NAME).exists()  # the old full copy is gone, none is written

    # A slide's file changes (re-embedded): the next read sees the new numbers.
    new = np.full((3, DIM), 7.0, np.float32)
    write_feature_file(run.features_path("enc", "s1"), new, arrays["s1"][1], {"settings_hash": "y"})
    reread = FeatureStore(run, "enc").matrix()
    np.testing.assert_array_equal(reread[:3], new)
    np.testing.assert_array_equal(reread[3:], arrays["s2"][0])


def test_tile_frame_equals_the_index_rows(store_run):
    run, _ = store_run
    store = FeatureStore(run, "enc")
    rows = np.array([1, 4, 6])
    frame = store.tile_frame(rows)
    expected = store.index().iloc[rows].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert list(store.offsets()) == [0, 3, 8]
    per_slide = store.index().drop_duplicates("slide_id")
    assert list(store.slide_values("split")) == per_slide["split"].tolist()


def test_store_from_folder(store_run):
    run, arrays = store_run
    store = FeatureStore.from_folder(run.features_dir("enc"))
    assert store.slide_ids == ["s1", "s2"]
    np.testing.assert_array_equal(store.matrix()[3:], arrays["s2"][0])
    assert "split" not in store.index().columns


def _clam_folder(tmp_path, slides, dim=12, dtype=np.float16):
    folder = tmp_path / "clam_feats" / "h5_files"
    folder.mkdir(parents=True)
    (folder.parent / "pt_files").mkdir()
    rng = np.random.default_rng(1)
    data = {}
    for slide_id, n in slides.items():
        feats = rng.normal(size=(n, dim)).astype(dtype)
        coords = rng.integers(0, 50_000, size=(n, 2)).astype(np.int32)
        with h5py.File(folder / f"{slide_id}.h5", "w") as h5:
            h5.create_dataset("features", data=feats)
            h5.create_dataset("coords", data=coords)
        data[slide_id] = (feats, coords)
    return folder.parent, data


def test_import_clam_folder(tmp_path):
    run = RunDir(tmp_path / "run")
    write_cohort(run, {s: tmp_path / f"{s}.svs" for s in ("s1", "s2", "s3")})
    src, data = _clam_folder(tmp_path, {"s1": 4, "s2": 6, "other": 2})

    summary = import_features("clam", src, run, "uni_clam")
    assert summary["imported"] == 2 and summary["dim"] == 12
    assert summary["not_in_cohort"] == ["other"] and summary["cohort_without_file"] == ["s3"]

    store = FeatureStore(run, "uni_clam")
    feats, coords = store.load("s2")
    np.testing.assert_array_equal(feats, data["s2"][0].astype(np.float32))
    np.testing.assert_array_equal(coords, data["s2"][1])
    assert store.attrs("s1")["import_format"] == "clam"
    # `pathosae embed` keeps imported files instead of recomputing them.
    state = feature_file_state(run.features_path("uni_clam", "s1"), "any", coords, 12)
    assert state == "imported"


def test_import_trident_finds_features_folder_and_rejects_nans(tmp_path):
    run = RunDir(tmp_path / "run")
    write_cohort(run, {"s1": tmp_path / "s1.svs"})
    job = tmp_path / "trident_job" / "20x_256px_0px_overlap" / "features_uni_v1"
    job.mkdir(parents=True)
    feats = np.ones((3, 8), np.float32)
    with h5py.File(job / "s1.h5", "w") as h5:
        h5.create_dataset("features", data=feats)
        h5.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    summary = import_features("trident", tmp_path / "trident_job", run)
    assert summary["features"] == "uni_v1" and summary["imported"] == 1

    feats[1, 2] = np.nan
    with h5py.File(job / "s1.h5", "w") as h5:
        h5.create_dataset("features", data=feats)
        h5.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    with pytest.raises(PathosaeError, match=r"s1\.h5: 1 NaN/inf values \(first in tile row 1\)"):
        import_features("trident", job, run)


def test_import_errors_name_the_problem(tmp_path):
    run = RunDir(tmp_path / "run")
    write_cohort(run, {"s1": tmp_path / "s1.svs"})
    src, _ = _clam_folder(tmp_path, {"unrelated": 2})
    with pytest.raises(PathosaeError, match="named after a cohort slide id"):
        import_features("clam", src, run)
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "s1.h5", "w") as h5:
        h5.create_dataset("features", data=np.zeros((3, 4), np.float32))
        h5.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    with pytest.raises(PathosaeError, match=r"coords have shape \(2, 2\) but there are 3"):
        import_features("clam", bad, run)
