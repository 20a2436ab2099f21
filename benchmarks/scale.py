"""Cohort scale: every stage after embedding on feature-level synthetic cohorts of growing size.

For each size, ``pathosae synth-features`` writes a TRIDENT folder (features only, no slides),
then ``pathosae cohort``, ``pathosae import-features`` and each later stage run as their own
commands. Per stage: wall time and peak RSS of the whole process tree (the command and every
child, sampled from /proc), printed as a table with the growth exponent between sizes
(log(time ratio) / log(size ratio): 1 is linear; RSS exponents near 0 mean memory does not grow).

    .venv/bin/python benchmarks/scale.py --tiles 50000,400000,2000000 [--dim 1024]
        [--tiles-per-slide 1000 | --slides 100] [--out /tmp/pathosae_scale]
        [--stages sae,confounders,edit,...]

The baseline it names is its own smallest size: targets are ratios between sizes measured in the
same run (peak RSS at 2M <= 1.5x the peak at 400k and <= 6 GB; time at most linear in tiles).
Peak RSS is printed in GiB (2**30 bytes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
STAGES = ("sae", "confounders", "edit", "sharpen", "report")
FEATURES = "synth"


def tree_rss_bytes(root: int) -> int:
    """Summed resident memory of ``root`` and all its descendants (Linux /proc)."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def timed(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd``; its wall seconds and the peak RSS of its process tree (GiB)."""
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        peak = [0]

        def watch() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        code = proc.wait()
        watcher.join()
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}); see {log}")
    return {"seconds": time.perf_counter() - started, "peak_gib": peak[0] / 2**30}


def write_config(synth: Path, path: Path) -> Path:
    """The config synth-features writes (the imported folder's name, the cohort's confounder
    columns), otherwise the built-in defaults."""
    config = yaml.safe_load((synth / "config.yaml").read_text())
    config.setdefault("embedding", {})["baselines"] = []  # features only: nothing to embed
    path.write_text(yaml.safe_dump(config))
    return path


def run_size(n_tiles: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every step of one size, or the figures of an earlier run of the same size and settings
    (``DIR/<tiles>/result.json``: a killed benchmark resumes at the size it was on)."""
    root = Path(args.out) / f"{n_tiles}"
    synth, run, log = root / "synth", root / "run", root / "log.txt"
    slides = args.slides or max(8, n_tiles // args.tiles_per_slide)
    settings = {"tiles": n_tiles, "slides": slides, "dim": args.dim, "stages": args.stages,
                "rss_unit": "GiB"}
    done = root / "result.json"
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("settings") == settings:
            return dict(previous["results"])
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    if not (synth / "cohort.csv").is_file():
        results["synth-features"] = timed(
            [str(BIN / "pathosae"), "synth-features", "--out", str(synth), "--slides", str(slides),
             "--tiles", str(n_tiles // slides), "--dim", str(args.dim), "--seed", "0"], log)
    config = write_config(synth, root / "config.yaml")
    pathosae = str(BIN / "pathosae")
    results["cohort"] = timed([pathosae, "cohort", "--manifest", str(synth / "cohort.csv"),
                               "--out", str(run), "--config", str(config)], log)
    folder = next(synth.rglob(f"features_{FEATURES}"))
    results["import-features"] = timed([pathosae, "import-features", str(folder), "--run",
                                        str(run), "--format", "trident"], log)
    for stage in args.stages.split(","):
        command = "sharpen" if stage == "sharpen" else stage
        extra = ["--ground-truth", str(synth / "ground_truth")] if stage == "confounders" else []
        if stage == "report":
            cmd = [pathosae, "run", "--out", str(run), "--config", str(config),
                   "--stages", "report"]
        else:
            cmd = [pathosae, command, "--run", str(run), "--config", str(config), *extra]
        results[stage] = timed(cmd, log)
    done.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    return results


def exponent(small: float, large: float, ratio: float) -> str:
    if small <= 0 or large <= 0:
        return "–"
    return f"{math.log(large / small) / math.log(ratio):.2f}"


def print_table(sizes: list[int], results: dict[int, dict[str, dict[str, float]]]) -> None:
    steps = list(results[sizes[0]])
    head = " | ".join(f"{s:,} tiles: s / GiB" for s in sizes)
    growth = " | ".join(f"exp {a:,}→{b:,} (time, RSS)" for a, b in itertools.pairwise(sizes))
    print(f"| step | {head} | {growth} |")
    print("|" + " --- |" * (1 + len(sizes) + len(sizes) - 1))
    for step in steps:
        cells = [f"{results[s][step]['seconds']:.0f} / {results[s][step]['peak_gib']:.2f}"
                 if step in results[s] else "–" for s in sizes]
        exps = []
        for a, b in itertools.pairwise(sizes):
            ra, rb = results[a].get(step), results[b].get(step)
            exps.append("–" if not ra or not rb else
                        f"{exponent(ra['seconds'], rb['seconds'], b / a)}, "
                        f"{exponent(ra['peak_gib'], rb['peak_gib'], b / a)}")
        print(f"| {step} | {' | '.join(cells)} | {' | '.join(exps)} |")
    for s in sizes:
        post = sum(v["seconds"] for k, v in results[s].items() if k in STAGES)
        peak = max((v["peak_gib"] for k, v in results[s].items() if k in STAGES), default=0.0)
        print(f"{s:,} tiles: post-embedding stages {post / 60:.1f} min, peak RSS {peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", default="50000,400000,2000000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--tiles-per-slide", type=int, default=1000)
    parser.add_argument("--slides", type=int, default=None,
                        help="The same slides at every size (tiles per slide grow with the size): "
                        "slide-level work stays fixed and the growth is the tiles' alone.")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--out", default="/tmp/pathosae_scale")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sizes = [int(s) for s in args.tiles.split(",")]
    results = {}
    for n in sizes:
        results[n] = run_size(n, args)
        print(f"{n:,} tiles: {json.dumps(results[n])}", flush=True)
    print_table(sizes, results)
    (Path(args.out) / "scale.json").write_text(json.dumps(
        {str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
