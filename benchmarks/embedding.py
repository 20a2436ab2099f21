"""Embedding throughput: `pathosae embed` end to end against the model's forward pass alone.

Both are measured in the same process on the same tiles: the forward-only baseline runs the same
encoder (same preprocessing, layout and precision) on uint8 tiles already in memory, so the ratio
is the cost of the data pipeline (reading the slides in worker processes, batching, writing h5).
Target on a 2-core CPU with 2 workers: end to end >= 0.85x forward-only.

On CUDA it also reports a UNI-sized ViT-L/16 (random weights) in the model's precision: tiles/s
and the fraction of the GPU's dense peak.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/embedding.py [--tiles 256] [--repeats 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import tifffile
import torch

from pathosae.config import load_config
from pathosae.embedding.device import forward_batch, plan_inference, prepare_model
from pathosae.embedding.stage import run_stage
from pathosae.encoders import build_encoder
from pathosae.io import write_parquet_atomic
from pathosae.run import RunDir
from pathosae.slides import open_slide
from pathosae.tiling.reader import TileGeometry, load_tiles, read_tile

TILE_PX = 224
MPP = 0.5
# Dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
# More specific names first (an "H100 PCIe" must not match "H100").
GPU_PEAK_TFLOPS = {
    "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0,
    "A10": 125.0, "V100": 125.0, "RTX 4090": 165.0, "A6000": 155.0,
}


def write_slide(path: Path, tiles_per_side: int, seed: int) -> None:
    """A JPEG-tiled pyramidal TIFF with tissue-like texture, read by OpenSlide."""
    rng = np.random.default_rng(seed)
    edge = tiles_per_side * TILE_PX
    coarse = rng.integers(90, 230, size=(edge // 8, edge // 8, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
    image = (image.astype(np.int16) + rng.integers(-20, 20, size=image.shape)).clip(0, 255)
    image = image.astype(np.uint8)
    res = 1e4 / MPP
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, tile=(256, 256), photometric="rgb", compression="jpeg",
                  resolution=(res, res), resolutionunit="CENTIMETER")
        tif.write(np.ascontiguousarray(image[::4, ::4]), tile=(256, 256), photometric="rgb",
                  compression="jpeg", resolution=(res / 4, res / 4), resolutionunit="CENTIMETER",
                  subfiletype=1)


def make_run(root: Path, n_tiles: int, n_slides: int = 2) -> RunDir:
    run = RunDir(root / "run")
    root.mkdir(parents=True, exist_ok=True)
    per_side = int(np.ceil(np.sqrt(n_tiles / n_slides)))
    rows = []
    for i in range(n_slides):
        slide_id = f"bench{i:02d}"
        path = root / f"{slide_id}.tiff"
        write_slide(path, per_side, seed=i)
        coords = [(x * TILE_PX, y * TILE_PX) for y in range(per_side) for x in range(per_side)]
        coords = np.asarray(coords[: n_tiles // n_slides], dtype=np.int64)
        geom = TileGeometry(slide_id, str(path), MPP, MPP, TILE_PX, float(TILE_PX), 0, TILE_PX,
                            0.5, "bench", "bench")
        run.tiles_dir.mkdir(parents=True, exist_ok=True)
        with h5py.File(run.tiles_path(slide_id), "w") as h5:
            h5.create_dataset("coords", data=coords)
            for key, value in geom.to_h5_attrs().items():
                h5.attrs[key] = value
        rows.append({"slide_id": slide_id, "path": str(path), "patient_id": f"p{i}",
                     "mpp": np.nan, "split": "train", "manifest_row": i + 2, "label": "a"})
    write_parquet_atomic(run.cohort_path, pd.DataFrame(rows))
    return run


def tiles_in_memory(run: RunDir, slide_ids: list[str]) -> torch.Tensor:
    tiles = []
    for slide_id in slide_ids:
        coords, geom = load_tiles(run, slide_id)
        slide = open_slide(geom.slide_path, slide_id)
        tiles.extend(read_tile(slide, x, y, geom) for x, y in coords)
        slide.close()
    return torch.from_numpy(np.stack(tiles))


def forward_only(encoder, plan, tiles: torch.Tensor, batch_size: int) -> float:
    """tiles/s of preprocessing + model on uint8 tiles already in (host) memory."""
    model = prepare_model(encoder, plan)
    forward_batch(model, tiles[:batch_size], plan)  # warm-up
    sync(plan.device)
    t0 = time.perf_counter()
    for start in range(0, len(tiles), batch_size):
        forward_batch(model, tiles[start : start + batch_size], plan)
    sync(plan.device)
    return len(tiles) / (time.perf_counter() - t0)


def end_to_end(run: RunDir, cfg) -> tuple[float, float]:
    """(tiles/s of the stage's loop, tiles/s including model build) of `pathosae embed`."""
    shutil.rmtree(run.root / "features", ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_stage(run, cfg, "stop")
    wall = time.perf_counter() - t0
    return summary["tiles_per_s"], summary["tiles"] / wall


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    run: RunDir, encoder_name: str, overrides: dict, repeats: int, label: str
) -> tuple[object, float]:
    """Print the table for one encoder; returns (inference plan, forward-only tiles/s)."""
    # The baseline feature sets (random twin, stain-normalised) would be timed too: measure one.
    cfg = load_config(None, {"embedding": {"encoder": encoder_name, "baselines": [], **overrides}})
    emb = cfg.embedding
    encoder = build_encoder(emb.encoder, emb.weights, random_weights=emb.random_weights)
    plan = plan_inference(emb, encoder.spec)
    slide_ids = sorted(p.stem for p in run.tiles_dir.glob("*.h5"))
    tiles = tiles_in_memory(run, slide_ids)
    fwd, e2e, e2e_wall = [], [], []
    for _ in range(repeats):  # interleaved, so load from other users hits both alike
        fwd.append(forward_only(encoder, plan, tiles, emb.batch_size))
        loop_rate, wall_rate = end_to_end(run, cfg)
        e2e.append(loop_rate)
        e2e_wall.append(wall_rate)
    f, e, w = (statistics.median(v) for v in (fwd, e2e, e2e_wall))
    print(f"\n{label}: {len(tiles)} tiles of {TILE_PX} px, device {plan.device}, "
          f"precision {plan.precision}, channels_last {plan.channels_last}, "
          f"batch {emb.batch_size}, workers {emb.num_workers}, torch threads "
          f"{torch.get_num_threads()}, median of {repeats}")
    print(f"{'measure':<44}{'tiles/s':>10}{'ratio':>8}")
    print(f"{'forward only (tiles in memory, baseline)':<44}{f:>10.1f}{1.0:>8.2f}")
    print(f"{'pathosae embed, end to end (stage loop)':<44}{e:>10.1f}{e / f:>8.2f}")
    print(f"{'pathosae embed, incl. model build':<44}{w:>10.1f}{w / f:>8.2f}")
    print(f"target: end to end >= 0.85x forward only -> {'met' if e / f >= 0.85 else 'NOT met'}")
    print("per repeat (forward only / end to end): "
          + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(fwd, e2e, strict=True)))
    return plan, f


def vit_large_flops_per_tile(tokens: int = 197, dim: int = 1024, depth: int = 24,
                             patch: int = 16) -> float:
    """Forward FLOPs of ViT-L/16 at 224 px (2 per multiply-add)."""
    per_block = 2 * (12 * tokens * dim * dim + 2 * tokens * tokens * dim)
    patch_embed = 2 * (tokens - 1) * (3 * patch * patch) * dim
    return depth * per_block + patch_embed


def cuda_report(run: RunDir, repeats: int, batch_size: int) -> None:
    overrides = {"random_weights": True, "batch_size": batch_size, "num_workers": 8,
                 "device": "cuda"}
    plan, fwd = compare(run, "uni", overrides, repeats, "UNI-sized ViT-L/16, random weights")
    name = torch.cuda.get_device_name(plan.device)
    peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
    achieved = fwd * vit_large_flops_per_tile() / 1e12
    if peak is None:
        print(f"{name}: {achieved:.1f} TFLOP/s achieved (peak unknown for this GPU)")
    else:
        print(f"{name}: {achieved:.1f} TFLOP/s achieved in the forward pass = "
              f"{achieved / peak:.1%} of the {peak:.0f} TFLOP/s dense {plan.precision} peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu-tiles", type=int, default=8192)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pathosae-bench-") as tmp:
        run = make_run(Path(tmp) / "cpu", args.tiles)
        compare(run, "efficientnet_lite0",
                {"device": "cpu", "num_workers": 2, "batch_size": 32}, args.repeats,
                "EfficientNet-Lite0 (packaged ImageNet weights), CPU")
        if torch.cuda.is_available():
            gpu_run = make_run(Path(tmp) / "gpu", args.gpu_tiles, n_slides=4)
            cuda_report(gpu_run, args.repeats, batch_size=256)
        else:
            print("\nno CUDA device: the ViT-L/16 GPU figures are skipped")


if __name__ == "__main__":
    main()
