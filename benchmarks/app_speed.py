"""App speed on a synthetic run of 100k tiles: time to open a run and to render a unit page.

Targets: open < 5 s, unit page < 1 s. Baseline, measured in the same run: the app without the
unit cache, which must encode every tile with the SAE for a unit page (done here once, timed).

The run is synthetic but real where the app reads it: 4 synthetic slides (pyramidal TIFFs read by
OpenSlide) behind 50 cohort entries, tiles files with the tiling geometry, per-slide feature files
(384-d, clustered), a 3072-unit TopK SAE (k=32) saved by pathosae.sae, and an association table
from pathosae.confounders' scan.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/app_speed.py [--tiles 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
N_SLIDES, DIM, D_SAE, K = 50, 384, 3072, 32


def build_run(root: Path, n_tiles: int) -> Path:
    from pathosae.config import PathosaeConfig
    from pathosae.embedding.h5files import write_feature_file
    from pathosae.io import write_parquet_atomic
    from pathosae.run import RunDir
    from pathosae.sae import build_sae, save_sae
    from pathosae.slides import open_slide
    from pathosae.synth import SynthParams, generate_cohort
    from pathosae.tiling.reader import TileGeometry

    manifest = generate_cohort(root / "slides", n_slides=4, seed=0,
                               params=SynthParams(slide_px_min=1500, slide_px_max=1800))
    real = pd.read_csv(manifest)
    paths = [str((manifest.parent / p).resolve()) for p in real["path"]]
    run = RunDir(root / "run")
    cfg = PathosaeConfig.model_validate({"embedding": {"encoder": "bench"}})
    run.init(cfg.model_dump(mode="json"), str(manifest), None)
    rng = np.random.default_rng(0)
    ids = [f"s{i:03d}" for i in range(N_SLIDES)]
    cohort = pd.DataFrame({
        "slide_id": ids, "path": [paths[i % len(paths)] for i in range(N_SLIDES)],
        "patient_id": [f"p{i:03d}" for i in range(N_SLIDES)], "mpp": np.nan,
        "split": np.tile(["train", "train", "train", "val", "test"], N_SLIDES // 5),
        "manifest_row": np.arange(N_SLIDES) + 2,
        "label": rng.choice(["low", "high"], N_SLIDES), "site": rng.choice(["A", "B", "C"], N_SLIDES),
        "scanner": rng.choice(["s1", "s2"], N_SLIDES),
    })
    write_parquet_atomic(run.cohort_path, cohort)
    per_slide = n_tiles // N_SLIDES
    centres = rng.normal(size=(64, DIM)).astype(np.float32)
    for row in cohort.itertuples():
        width, height = open_slide(row.path, row.slide_id).dimensions
        grid = np.array([(x, y) for y in range(0, height - 224, 224) for x in range(0, width - 224, 224)])
        coords = grid[np.arange(per_slide) % len(grid)].astype(np.int64)
        geom = TileGeometry(row.slide_id, row.path, 0.5, 0.5, 224, 224.0, 0, 224, 0.5, "bench", "bench")
        run.tiles_dir.mkdir(parents=True, exist_ok=True)
        with h5py.File(run.tiles_path(row.slide_id), "w") as h5:
            h5.create_dataset("coords", data=coords)
            h5.attrs.update(geom.to_h5_attrs())
        cluster = rng.integers(0, len(centres), per_slide)
        feats = centres[cluster] + 0.5 * rng.normal(size=(per_slide, DIM)).astype(np.float32)
        write_feature_file(run.features_path("bench", row.slide_id), feats, coords,
                           {"encoder": "bench", "dim": DIM})
    torch.manual_seed(0)
    save_sae(build_sae("topk", d_in=DIM, d_sae=D_SAE, k=K), run.sae_dir("topk"),
             extra_config={"features": "bench"})
    return run.root


def write_associations(root: Path) -> None:
    from pathosae.app import RunView
    from pathosae.confounders import add_qvalues, association_scan
    from pathosae.io import write_parquet_atomic

    view = RunView(root)
    acts = view.activations("topk")
    slides = view.slide_rows("topk")
    means = np.zeros((len(slides), acts.d_sae))
    for unit in range(acts.d_sae):
        rows, values = acts.unit(unit)
        slide = np.searchsorted(slides["start"].to_numpy(), rows, side="right") - 1
        means[:, unit] = np.bincount(slide, weights=values, minlength=len(slides))
    means /= (slides["stop"] - slides["start"]).to_numpy()[:, None]
    meta = view.cohort.set_index("slide_id").loc[slides["slide_id"]].reset_index()
    table = association_scan(means, meta, ["site", "scanner", "label"])
    table.insert(2, "aggregation", "mean")
    table.insert(3, "level", "slide")
    write_parquet_atomic(root / "confounders" / "associations.parquet", add_qvalues(table))


def baseline_encode_all(root: Path) -> float:
    """What a unit page costs without the cache: encode every tile, take the unit's column."""
    from pathosae.app import RunView
    from pathosae.features import FeatureStore

    view = RunView(root)
    sae = view.load_sae("topk")
    matrix = FeatureStore(view.run, "bench").matrix()
    started = time.perf_counter()
    with torch.no_grad():
        column = [sae.encode(torch.from_numpy(np.array(matrix[a:a + 8192])))[:, 7].numpy()
                  for a in range(0, len(matrix), 8192)]
    np.argsort(-np.concatenate(column))[:12]
    return time.perf_counter() - started


def time_app(root: Path, units: list[int]) -> tuple[float, list[float]]:
    """Open (first script run of the Units page) and unit-page renders, through AppTest."""
    from streamlit.testing.v1 import AppTest

    os.environ["PATHOSAE_APP_RUN"] = str(root)
    at = AppTest.from_file(str(ROOT / "apps" / "pathosae_app.py"), default_timeout=300)
    at.session_state["page"] = "Units"
    at.session_state["unit"] = units[0]
    started = time.perf_counter()
    at.run()
    opened = time.perf_counter() - started
    if at.exception:
        sys.exit(f"the app failed: {at.exception[0].value}")
    renders = []
    for unit in units[1:]:
        at.number_input(key="unit").set_value(unit)
        started = time.perf_counter()
        at.run()
        renders.append(time.perf_counter() - started)
        assert f"Unit {unit}" in [s.value for s in at.subheader], "unit page did not render"
    return opened, renders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pathosae_app_bench_"))
    started = time.perf_counter()
    root = build_run(workdir, args.tiles)
    print(f"synthetic run: {args.tiles:,} tiles, {N_SLIDES} slides, {DIM}-d features, "
          f"{D_SAE} units (built in {time.perf_counter() - started:.1f} s) at {root}")

    from pathosae.app import RunView

    started = time.perf_counter()
    RunView(root).prepare("topk")
    cache_s = time.perf_counter() - started
    write_associations(root)
    baseline = baseline_encode_all(root)
    freq = RunView(root).activations("topk").units.sort_values("frequency")
    live = freq[freq["n_tiles"] > 0]["unit"].to_numpy()
    units = [int(u) for u in np.random.default_rng(1).choice(live, 6, replace=False)]
    opened, renders = time_app(root, units)
    print(f"unit cache, built once per run and SAE: {cache_s:.2f} s")
    print(f"{'measure':<34}{'pathosae app':>14}{'target':>10}{'no cache':>12}")
    print(f"{'open run (Units page, first run)':<34}{opened:>13.2f}s{'5 s':>10}{baseline:>11.2f}s")
    print(f"{'unit page render (median of 5)':<34}{statistics.median(renders):>13.2f}s"
          f"{'1 s':>10}{baseline:>11.2f}s")
    print(f"{'unit page render (max of 5)':<34}{max(renders):>13.2f}s{'1 s':>10}")
    ok = opened < 5 and max(renders) < 1
    print("targets met" if ok else "targets NOT met")


if __name__ == "__main__":
    main()
