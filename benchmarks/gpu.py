"""GPU throughput: SAE training against the matmul limit, and ViT-L/16 embedding against it.

Both figures are set beside a limit measured in the same run on the same device: the bf16 dense
matmul rate on CUDA (fp32 on a CPU, where this script also runs, for a dry run), at the SAE
encoder's shape. SAE training does at least 4·d·d_sae FLOP per sample (the dense encoder's
forward and its weight gradient; the TopK decoder is sparse), so

    % of limit = samples/s × 4·d·d_sae / matmul FLOP/s.

ViT-L/16 at 224 px costs about 2 × 61.6 GMAC per tile (timm's architecture, random weights:
nothing is downloaded); tiles/s × that FLOP count against the same limit gives its share.

    .venv/bin/python benchmarks/gpu.py [--d 1024 --expansion 16 --k 64 --batch 4096 --steps 200]
"""

from __future__ import annotations

import argparse
import time

import torch

VIT_L16_FLOP = 2 * 61.6e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_limit(device: torch.device, dtype: torch.dtype, batch: int, d: int, d_sae: int) -> float:
    """Best FLOP/s of ``batch × d @ d × d_sae`` over a few repeats."""
    x = torch.randn(batch, d, device=device, dtype=dtype)
    w = torch.randn(d, d_sae, device=device, dtype=dtype)
    for _ in range(3):
        x @ w
    sync(device)
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        for _ in range(5):
            x @ w
        sync(device)
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * batch * d * d_sae / best


def sae_samples_per_s(device: torch.device, args: argparse.Namespace) -> float:
    from pathosae.config import SAEConfig
    from pathosae.sae import train_sae

    gen = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(4 * args.d, args.d, generator=gen), dim=1)
    codes = torch.rand(args.batch * 8, 4 * args.d, generator=gen).pow(8)
    x = (codes @ atoms).to(device)
    cfg = SAEConfig(d_sae=args.expansion * args.d, k=args.k, batch_size=args.batch,
                    n_samples=args.steps * args.batch, device=str(device), init_samples=4096)
    marks: list[float] = []
    train_sae(x, cfg, progress=lambda *_: (sync(device), marks.append(time.perf_counter())))
    timed = marks[-1] - marks[min(5, len(marks) - 2)]  # after warm-up steps
    return (len(marks) - 1 - min(5, len(marks) - 2)) * args.batch / timed


def vit_tiles_per_s(device: torch.device, batch: int, repeats: int) -> float:
    import timm

    model = timm.create_model("vit_large_patch16_224", pretrained=False).eval().to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tiles = torch.randn(batch, 3, 224, 224, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                enabled=device.type == "cuda"):
        model(tiles)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(tiles)
        sync(device)
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--vit-batch", type=int, default=256)
    parser.add_argument("--vit-repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":  # a dry run: small enough to finish in a minute
        args.steps, args.batch, args.vit_batch, args.vit_repeats = 20, 512, 4, 1
    d_sae = args.expansion * args.d
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    limit = matmul_limit(device, dtype, args.batch, args.d, d_sae)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; {str(dtype).removeprefix('torch.')} matmul limit "
          f"{limit / 1e12:.1f} TFLOP/s at {args.batch}×{args.d}×{d_sae}")
    sps = sae_samples_per_s(device, args)
    print("| measurement | figure | FLOP/s | % of the matmul limit |\n| --- | --- | --- | --- |")
    sae_flops = sps * 4 * args.d * d_sae
    print(f"| SAE training (TopK, d {args.d}, d_sae {d_sae}, k {args.k}, batch {args.batch}) | "
          f"{sps:,.0f} samples/s | {sae_flops / 1e12:.2f} T | {100 * sae_flops / limit:.0f}% |")
    tps = vit_tiles_per_s(device, args.vit_batch, args.vit_repeats)
    vit_flops = tps * VIT_L16_FLOP
    print(f"| ViT-L/16 embedding (224 px, batch {args.vit_batch}) | {tps:,.1f} tiles/s | "
          f"{vit_flops / 1e12:.2f} T | {100 * vit_flops / limit:.0f}% |")


if __name__ == "__main__":
    main()
