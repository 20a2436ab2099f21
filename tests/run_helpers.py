"""Helpers for the `pathosae run` reliability and Slurm tests: tiny cohorts, configs, the real CLI
in a subprocess, and snapshots of a run's output files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from pathosae.run import RunDir

# A tiny but real pipeline: no baseline feature sets, batches of a few tiles (so embedding a slide
# takes long enough to be interrupted), one reader process, and a small SAE with its controls off.
FAST_CONFIG: dict[str, Any] = {
    "tiling": {"num_workers": 1},
    "embedding": {"batch_size": 2, "num_workers": 0, "baselines": [], "device": "cpu"},
    "sae": {
        "n_samples": 2000, "batch_size": 64, "expansion": 2, "k": 8, "init_samples": 1000,
        "dead_window": 1000, "eval_max_rows": 1000,
        "controls": {"random_encoder": False, "permuted": False, "seed_stability": False,
                     "concept_coverage": False, "max_rows": 1000},
    },
}
ENCODER = "efficientnet_lite0"
PATHOSAE = Path(sys.executable).with_name("pathosae")  # the console script of this venv


def make_cohort(out: Path, n_slides: int = 5, px: tuple[int, int] = (1200, 1500), seed: int = 0) -> Path:
    """A synthetic cohort (real pyramidal TIFFs) of ``n_slides`` slides; returns the manifest."""
    from pathosae.synth import SynthParams, generate_cohort

    params = SynthParams(slide_px_min=px[0], slide_px_max=px[1])
    return generate_cohort(out, n_slides=n_slides, seed=seed, params=params)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def write_config(path: Path, **sections: Any) -> Path:
    """FAST_CONFIG with ``sections`` merged over it, as a YAML file."""
    path.write_text(yaml.safe_dump(merge(FAST_CONFIG, sections)), encoding="utf-8")
    return path


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`pathosae ARGS` in a subprocess, as a user runs it (exit code, stdout, stderr)."""
    return subprocess.run([str(PATHOSAE), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(), check=False)


def start_cli(*args: str | Path, log: Path) -> subprocess.Popen[bytes]:
    """`pathosae ARGS` in the background, in a session of its own (so it can be killed whole)."""
    with log.open("wb") as out:
        return subprocess.Popen([str(PATHOSAE), *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)


def h5_files(folder: Path) -> list[Path]:
    """Finished h5 files of a folder (temp files of atomic writes start with a dot)."""
    return sorted(p for p in folder.glob("*.h5") if not p.name.startswith("."))


def file_ids(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """{name: (inode, mtime_ns)}: changes whenever a file is rewritten (atomic writes rename)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def output_ids(run: RunDir, *parts: str) -> dict[str, tuple[int, int]]:
    """file_ids of every file under the given folders of a run (relative names)."""
    files = [p for part in parts for p in sorted((run.root / part).rglob("*")) if p.is_file()]
    return {str(p.relative_to(run.root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {name: h5[name][:] for name in h5}


def assert_same_arrays(got: Path, expected: Path, atol: float = 0.0) -> None:
    a, b = read_arrays(got), read_arrays(expected)
    assert set(a) == set(b), f"{got}: datasets {sorted(a)} != {sorted(b)}"
    for name in a:
        assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype, f"{got}:{name}"
        if atol == 0.0 or not np.issubdtype(a[name].dtype, np.floating):
            assert np.array_equal(a[name], b[name]), f"{got}:{name} differs from {expected}"
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=f"{got}:{name}")


def assert_same_run_outputs(got: RunDir, expected: RunDir, atol: float = 0.0) -> None:
    """Tile and feature files of two runs hold the same arrays (coords exactly; features to atol)."""
    for folder_of in (lambda r: r.tiles_dir, lambda r: r.features_dir(ENCODER)):
        got_files, expected_files = h5_files(folder_of(got)), h5_files(folder_of(expected))
        assert [p.name for p in got_files] == [p.name for p in expected_files]
        assert got_files, f"no h5 files in {folder_of(got)}"
        for g, e in zip(got_files, expected_files, strict=True):
            assert_same_arrays(g, e, atol)


def stage_entry(run: RunDir, stage: str) -> dict[str, Any]:
    return run.read_state()["stages"].get(stage, {})
