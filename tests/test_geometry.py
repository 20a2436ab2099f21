"""Tile geometry: read level, read size, grid and tissue fractions, checked by direct computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide
import pytest
from pyramid_tiff import textured_image, write_pyramid

from pathosae.tiling.geometry import best_level, grid_coords, plan_reads, tissue_fractions
from pathosae.tiling.reader import TileGeometry, read_rgb, read_tile, rgba_on_white


@pytest.mark.parametrize(
    ("source", "target", "downsamples", "level", "read_size"),
    [
        (0.499, 0.5, (1.0,), 0, 224),  # close mpps: no resize, no off-by-one
        (0.5, 0.5, (1.0, 4.0), 0, 224),
        (0.25, 0.5, (1.0, 4.0, 16.0), 0, 448),  # read level 0 and halve
        (0.25, 0.5, (1.0, 2.0, 8.0), 1, 224),  # a 2x level matches exactly
        (0.25, 1.0, (1.0, 4.0003, 16.0), 1, 224),  # rounding noise in OpenSlide downsamples
        (0.2525, 0.5, (1.0, 4.0), 0, 444),
        (0.23, 0.5, (1.0, 2.0, 4.0), 1, 243),  # 2.17x needed: level 1 and a small resize
        (1.0, 0.5, (1.0, 4.0), 0, 112),  # finer target than the scan: level 0, upsample
    ],
)
def test_plan_reads(source, target, downsamples, level, read_size):
    plan = plan_reads(downsamples, source, target, 224)
    assert plan.read_level == level
    assert plan.read_size_px == read_size
    assert plan.tile_size_level0 == pytest.approx(224 * target / source)
    assert plan.step_level0 == round(224 * target / source)
    # What is read covers the footprint to within half a pixel of the read level.
    assert abs(plan.read_extent_level0 - plan.tile_size_level0) <= plan.level_downsample / 2 + 1e-9


def test_best_level_never_exceeds_needed_downsample():
    downsamples = (1.0, 2.0, 4.0, 8.0, 16.0)
    assert best_level(downsamples, 0.5) == 0  # finer than the scan: level 0, nothing finer
    for wanted in np.linspace(1.0, 40.0, 200):
        level = best_level(downsamples, float(wanted))
        assert downsamples[level] <= wanted * 1.01
        finer_than_next = level == len(downsamples) - 1 or downsamples[level + 1] > wanted * 1.01
        assert finer_than_next


@pytest.mark.parametrize("source", [0.499, 0.25, 0.2525, 0.2631, 0.5, 0.74])
def test_grid_has_no_off_by_one_tiles(source):
    width, height = 5003, 3001
    plan = plan_reads((1.0, 4.0, 16.0), source, 0.5, 224)
    coords = grid_coords(width, height, plan)
    extent = max(plan.tile_size_level0, plan.read_extent_level0)
    xs, ys = np.unique(coords[:, 0]), np.unique(coords[:, 1])
    assert len(coords) == len(xs) * len(ys)
    # Every tile inside, and one more step would leave the slide.
    assert xs.max() + extent <= width and xs.max() + plan.step_level0 + extent > width
    assert ys.max() + extent <= height and ys.max() + plan.step_level0 + extent > height
    # Regular steps; adjacent footprints neither overlap nor gap by more than one pixel.
    assert set(np.diff(xs)) == {plan.step_level0} and set(np.diff(ys)) == {plan.step_level0}
    assert abs(plan.step_level0 - plan.tile_size_level0) <= 0.5
    # Row-major: y outer, x inner.
    order = np.lexsort((coords[:, 0], coords[:, 1]))
    assert np.array_equal(order, np.arange(len(coords)))


def test_grid_is_empty_when_the_slide_is_smaller_than_a_tile():
    plan = plan_reads((1.0,), 0.25, 0.5, 224)
    assert grid_coords(447, 5000, plan).shape == (0, 2)
    assert grid_coords(448, 448, plan).tolist() == [[0, 0]]


def test_tissue_fractions_match_supersampled_area():
    rng = np.random.default_rng(3)
    mask = rng.random((20, 24)) > 0.5
    scale = 3.0  # level-0 px per mask px
    tile = 7.5  # footprint edge in level-0 px: mask-pixel edges are cut
    coords = np.array([[x, y] for y in range(0, 50, 7) for x in range(0, 60, 8)], dtype=np.int64)
    fractions = tissue_fractions(mask, coords, tile, (scale, scale))
    sub = 2  # sub-pixels per level-0 px make every boundary fall on a sub-pixel edge
    fine = np.kron(mask, np.ones((int(scale * sub), int(scale * sub)), dtype=bool))
    edge = int(tile * sub)
    expected = [fine[y * sub : y * sub + edge, x * sub : x * sub + edge].mean() for x, y in coords]
    np.testing.assert_allclose(fractions, expected, atol=1e-9)


def _geometry(tile_px, read_level, read_size, source=0.25, target=0.5):
    return TileGeometry(
        slide_id="s", slide_path="", source_mpp=source, target_mpp=target, tile_px=tile_px,
        tile_size_level0=tile_px * target / source, read_level=read_level, read_size_px=read_size,
        tissue_threshold=0.5, settings_hash="", pathosae_version="",
    )


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pyr") / "p.tiff"
    return write_pyramid(path, textured_image(1536, 2048), 0.25, (1, 2, 4))


def test_pyramid_levels_and_mpp_as_openslide_sees_them(pyramid):
    with openslide.OpenSlide(str(pyramid)) as slide:
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.properties["tiff.ResolutionUnit"] == "centimeter"
        assert 1e4 / float(slide.properties["tiff.XResolution"]) == pytest.approx(0.25, rel=1e-4)
        for target, level in ((0.5, 1), (1.0, 2), (0.3, 0), (2.0, 2)):
            plan = plan_reads(slide.level_downsamples, 0.25, target, 224)
            assert plan.read_level == level


@pytest.mark.parametrize(("level", "read_size", "tile_px"), [(0, 448, 224), (1, 224, 224), (0, 243, 224)])
def test_read_tile_returns_exactly_tile_px(pyramid, level, read_size, tile_px):
    geom = _geometry(tile_px, level, read_size)
    with openslide.OpenSlide(str(pyramid)) as slide:
        tile = read_tile(slide, 512, 256, geom)
    assert tile.shape == (tile_px, tile_px, 3) and tile.dtype == np.uint8
    assert tile.flags.writeable and tile.flags.c_contiguous


def test_read_tile_resized_matches_the_lower_level(pyramid):
    # 448 px at level 0 resized to 224 should look like the same area read at level 1.
    with openslide.OpenSlide(str(pyramid)) as slide:
        from_level0 = read_tile(slide, 512, 256, _geometry(224, 0, 448)).astype(float)
        from_level1 = read_tile(slide, 512, 256, _geometry(224, 1, 224)).astype(float)
    assert np.abs(from_level0 - from_level1).mean() < 12


def test_read_rgb_matches_public_read_region_and_composites_on_white(pyramid):
    with openslide.OpenSlide(str(pyramid)) as slide:
        # Half of this region lies outside the slide: OpenSlide makes it transparent.
        location, size = (-100, -60), (300, 200)
        ours = read_rgb(slide, location, 0, size)
        public = rgba_on_white(np.asarray(slide.read_region(location, 0, size)))
        inside = read_rgb(slide, (300, 300), 1, (224, 224))
        inside_public = np.asarray(slide.read_region((300, 300), 1, (224, 224)))[..., :3]
    assert np.abs(ours.astype(int) - public.astype(int)).max() <= 1
    assert (ours[:60] == 255).all() and (ours[:, :100] == 255).all()
    assert np.array_equal(inside, inside_public)


def test_tile_geometry_round_trips_through_attrs():
    geom = _geometry(224, 1, 224)
    attrs = {**geom.to_h5_attrs(), "extra": 1}
    attrs["slide_id"] = b"s"  # h5py may hand back bytes
    assert TileGeometry.from_h5_attrs(attrs) == geom
    assert geom.step_level0 == 448 and not geom.needs_resize
    assert math.isclose(geom.tile_size_level0, 448.0)


def test_majority_mask_equals_thresholded_median_blur():
    """The fast tissue mask is exactly the median-blurred saturation above the threshold."""
    from scipy import ndimage

    from pathosae.tiling.tissue import median_above

    rng = np.random.default_rng(2)
    image = rng.integers(0, 60, (83, 71), dtype=np.uint8)
    image[20:50, 10:40] += 40  # a tissue-like block with noisy edges
    for size in (1, 3, 6, 7, 9):
        for threshold in (10, 20, 45):
            odd = size // 2 * 2 + 1
            expected = ndimage.median_filter(image, size=odd, mode="reflect") > threshold
            assert np.array_equal(median_above(image, size, threshold), expected)
