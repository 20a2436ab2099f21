"""TopK SAE training speed and quality: pathosae vs SAELens vs overcomplete, in one run.

Every implementation trains the same TopK SAE (width, k, batch size, steps, lr) on the same
minibatches in the same order, each in its own subprocess (so peak memory is its own), with the
order of implementations rotated between rounds. Reported per implementation (medians over rounds):
samples/s after the first step, peak RSS, held-out FVU by pathosae's one FVU function, and the
speed as a fraction of the dense encoder-matmul limit (2·d·d_sae FLOP per sample at the fp32
matmul rate measured in this run).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/sae_train.py [--run RUN] [--steps 60]
"""

from __future__ import annotations

import os

os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # before torch loads: idle OpenMP threads must sleep

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMPLEMENTATIONS = ("pathosae", "saelens", "saelens_sparse", "overcomplete")


# ---- data --------------------------------------------------------------------------------------
def make_synthetic(path: Path, n: int, d: int, n_atoms: int, active: int, seed: int) -> None:
    """Rows = mean + sum of `active` of `n_atoms` unit directions with positive weights + noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=gen), dim=1)
    mean = torch.randn(d, generator=gen)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 16_384):
        rows = min(16_384, n - start)
        idx = torch.randint(0, n_atoms, (rows, active), generator=gen)
        weights = torch.rand(rows, active, generator=gen).pow(3) * 3
        x = torch.nn.functional.embedding_bag(idx, atoms, mode="sum", per_sample_weights=weights)
        x += mean + 0.05 * torch.randn(rows, d, generator=gen)
        out[start : start + rows] = x.numpy()
    out.flush()


def run_features(run: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) rows of a run's feature store, split by the cohort's patient split."""
    from pathosae.config import load_config
    from pathosae.features import FeatureStore
    from pathosae.run import RunDir

    cfg = load_config(None)
    store = FeatureStore(RunDir(run), cfg.sae.encoder or cfg.embedding.features_name())
    matrix, split = store.matrix(), store.index()["split"].astype(str).to_numpy()
    train, held = np.flatnonzero(split == "train")[:limit], np.flatnonzero(split != "train")[:20_000]
    return np.asarray(matrix[train]), np.asarray(matrix[held])


def matmul_rate(d: int, d_sae: int, batch: int, threads: int) -> float:
    """fp32 GFLOP/s of the encoder's dense matmul shape (best of a few)."""
    import torch

    torch.set_num_threads(threads)
    x, w = torch.randn(batch, d), torch.randn(d_sae, d)
    torch.addmm(torch.zeros(d_sae), x, w.t())
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        torch.addmm(torch.zeros(d_sae), x, w.t())
        best = min(best, time.perf_counter() - t0)
    return 2 * batch * d * d_sae / best / 1e9


# ---- one implementation in a subprocess -------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train = np.load(args.train, mmap_mode="r")
    held = np.load(args.held, mmap_mode="r")
    from pathosae.sae.training import batch_indices, default_lr

    lr = default_lr(args.d_sae)
    order = list(batch_indices(len(train), args.batch, args.steps, seed=0))
    batches = (torch.from_numpy(np.ascontiguousarray(train[i])) for i in order)
    marks: list[float] = []
    recon_fn = {
        "pathosae": _run_pathosae, "saelens": _run_saelens, "saelens_sparse": _run_saelens,
        "overcomplete": _run_overcomplete,
    }[args.impl](args, train, order, batches, lr, marks)
    from pathosae.sae.metrics import StreamingMetrics

    stats = StreamingMetrics(train.shape[1], args.d_sae)
    with torch.no_grad():
        for start in range(0, len(held), 4096):
            x = torch.from_numpy(np.ascontiguousarray(held[start : start + 4096]))
            stats.update(x, recon_fn(x), torch.zeros(0, dtype=torch.int64))
    timed = marks[-1] - marks[0]
    print(json.dumps({
        "impl": args.impl,
        "samples_per_s": (len(marks) - 1) * args.batch / timed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fvu": stats.result()["fvu"],
    }))


def _run_pathosae(args, train, order, batches, lr, marks):
    del batches  # the runners' shared signature; train_sae reads the rows itself, in ``order``
    from pathosae.config import SAEConfig
    from pathosae.sae import train_sae

    cfg = SAEConfig(d_sae=args.d_sae, k=args.k, batch_size=args.batch, lr=lr,
                    n_samples=args.steps * args.batch, threads=args.threads, device="cpu")
    sae = train_sae(train, cfg, batches=order,
                    progress=lambda *_: marks.append(time.perf_counter()))
    return sae.reconstruct


def _run_saelens(args, train, order, batches, lr, marks):
    del order  # the runners' shared signature; the batches already follow it
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sparse = args.impl == "saelens_sparse"
    cfg = TopKTrainingSAEConfig(
        d_in=train.shape[1], d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu",
        use_sparse_activations=sparse, rescale_acts_by_decoder_norm=not sparse,
    )
    sae = TopKTrainingSAE(cfg)
    with torch.no_grad():  # SAELens's runner can start b_dec at the data mean; do the same
        sae.b_dec.copy_(torch.from_numpy(np.asarray(train[:16_384]).mean(0)))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(args.d_sae)
    for step, x in enumerate(batches):
        # The body of SAELens's SAETrainer._train_step (no autocast, no logging).
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=(since_fired > 100_000 // args.batch),
            n_training_steps=step, is_logging_step=False,
        ))
        with torch.no_grad():
            fired = out.feature_acts.bool().float().sum(-2).bool()
            fired = fired.to_dense() if fired.is_sparse else fired
            since_fired += 1
            since_fired[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        marks.append(time.perf_counter())
    sae.eval()

    def reconstruct(x):
        out = sae(x)
        return out.to_dense() if out.is_sparse else out

    return reconstruct


def _run_overcomplete(args, train, order, batches, lr, marks):
    del order  # the runners' shared signature; the batches already follow it
    import matplotlib.cm
    import matplotlib.pyplot as plt
    import torch

    if not hasattr(matplotlib.cm, "get_cmap"):  # overcomplete 0.3.0 needs the removed name
        matplotlib.cm.get_cmap = plt.get_cmap
    from overcomplete.sae import TopKSAE
    from overcomplete.sae.losses import top_k_auxiliary_loss
    from overcomplete.sae.train import train_sae

    model = TopKSAE(train.shape[1], nb_concepts=args.d_sae, top_k=args.k, device="cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def timed_batches():
        for x in batches:
            yield x
            marks.append(time.perf_counter())

    train_sae(model, timed_batches(), top_k_auxiliary_loss, optimizer, nb_epochs=1, monitoring=0)
    model.eval()
    return lambda x: model(x)[2]


# ---- the parent: data, rounds, table ----------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="also benchmark on this run's features")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--held", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="sae_bench_") as tmp:
        datasets = {}
        train, held = Path(tmp) / "synth_train.npy", Path(tmp) / "synth_held.npy"
        make_synthetic(train, args.rows, args.dim, 4 * args.d_sae, args.k, seed=0)
        make_synthetic(held, 10_000, args.dim, 4 * args.d_sae, args.k, seed=0)
        datasets[f"synthetic {args.rows}x{args.dim}"] = (train, held)
        if args.run:
            run_train, run_held = run_features(args.run, args.rows)
            paths = Path(tmp) / "run_train.npy", Path(tmp) / "run_held.npy"
            np.save(paths[0], run_train)
            np.save(paths[1], run_held)
            datasets[f"run {Path(args.run).name} {run_train.shape[0]}x{run_train.shape[1]}"] = paths
        for name, (train_path, held_path) in datasets.items():
            benchmark(name, train_path, held_path, args)


def benchmark(name: str, train_path: Path, held_path: Path, args: argparse.Namespace) -> None:
    impls = args.impls.split(",")
    dim = np.load(train_path, mmap_mode="r").shape[1]
    results: dict[str, list[dict]] = {i: [] for i in impls}
    rates = []
    for round_no in range(args.rounds):
        rates.append(matmul_rate(dim, args.d_sae, args.batch, args.threads))
        order = impls[round_no % len(impls):] + impls[: round_no % len(impls)]
        for impl in order:
            cmd = [sys.executable, __file__, "--child", "--impl", impl, "--train", str(train_path),
                   "--held", str(held_path), "--d-sae", str(args.d_sae), "--k", str(args.k),
                   "--batch", str(args.batch), "--steps", str(args.steps),
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"[{name}] {impl} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            results[impl].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  round {round_no + 1} {impl}: {results[impl][-1]}", file=sys.stderr)
    gflops = statistics.median(rates)
    limit = gflops * 1e9 / (2 * dim * args.d_sae)
    print(f"\n## {name}: d_sae={args.d_sae}, k={args.k}, batch={args.batch}, steps={args.steps}, "
          f"rounds={args.rounds}, threads={args.threads}")
    print(f"fp32 matmul {gflops:.1f} GFLOP/s -> encoder-matmul limit {limit:,.0f} samples/s\n")
    print("| implementation | samples/s | x fastest peer | % of limit | peak RSS MB | held-out FVU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    medians = {
        i: {k: statistics.median(r[k] for r in rs) for k in ("samples_per_s", "peak_rss_mb", "fvu")}
        for i, rs in results.items() if rs
    }
    peers = [m["samples_per_s"] for i, m in medians.items() if i != "pathosae"]
    fastest_peer = max(peers) if peers else float("nan")
    for impl, m in medians.items():
        print(f"| {impl} | {m['samples_per_s']:,.0f} | {m['samples_per_s'] / fastest_peer:.2f} | "
              f"{100 * m['samples_per_s'] / limit:.0f}% | {m['peak_rss_mb']:,.0f} | {m['fvu']:.4f} |")


if __name__ == "__main__":
    main()
