"""Fingerprints of a stage's inputs, and the "skip when nothing changed" check built on them.

A stage stores ``settings_hash`` (a hash of its settings and of these fingerprints) in its
summary; when a rerun computes the same hash and every output is present, it returns the stored
summary instead of recomputing. Feature files are fingerprinted by name, size and mtime (hashing
gigabytes of features on every run would cost more than most stages); small files that decide
results (cohort table, SAE weights) by their SHA-256.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pathosae.io import read_json, settings_hash, sha256_file
from pathosae.run import RunDir
from pathosae.schema import SAE_CONFIG, SAE_WEIGHTS, SETTINGS_HASH

FileStat = tuple[str, int | None, int | None]  # name, size in bytes, mtime in ns (None: absent)


def file_stats(paths: Iterable[Path]) -> list[FileStat]:
    """Name, size and mtime of each path; an absent file gives ``None`` for both."""
    out: list[FileStat] = []
    for path in paths:
        stat = path.stat() if path.exists() else None
        out.append((path.name, stat.st_size if stat else None, stat.st_mtime_ns if stat else None))
    return out


def folder_fingerprint(folder: Path, pattern: str = "*.h5") -> list[FileStat] | None:
    """The files of a folder matching ``pattern`` (None when the folder is absent)."""
    if not folder.is_dir():
        return None
    return file_stats(sorted(folder.glob(pattern)))


def file_hash(path: Path) -> str | None:
    """SHA-256 of a file, or None when it does not exist."""
    return sha256_file(path) if path.is_file() else None


def input_fingerprint(
    run: RunDir, encoder: str, sae_dir: Path | None, slide_ids: Sequence[str]
) -> str:
    """What the analysis stages read: cohort table, SAE weights and each feature file's stats."""
    features = [
        [sid, size, mtime] for sid, (_, size, mtime) in
        zip(slide_ids, file_stats(run.features_path(encoder, s) for s in slide_ids), strict=True)
    ]
    return settings_hash({
        "cohort": sha256_file(run.cohort_path),
        "sae": sha256_file(sae_dir / SAE_WEIGHTS) if sae_dir else None,
        "sae_cfg": sha256_file(sae_dir / SAE_CONFIG) if sae_dir else None,
        "features": features,
    })


def previous_summary(path: Path) -> dict[str, Any]:
    """A stage's stored summary, or an empty one when absent or unreadable."""
    try:
        found = read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def current_summary(
    summary_path: Path, key: str, outputs: Iterable[Path], key_field: str = SETTINGS_HASH
) -> dict[str, Any] | None:
    """The stored summary when it was computed with ``key`` and every output exists; else None."""
    previous = previous_summary(summary_path)
    if previous.get(key_field) == key and all(p.exists() for p in outputs):
        return previous
    return None
