"""The run directory: where every stage reads its inputs and writes its outputs.

``run.json`` at the root records the resolved config, package versions, the manifest's hash and
each stage's status, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pathosae.errors import PathosaeError, StageError
from pathosae.io import read_json, write_json_atomic
from pathosae.schema import COHORT_ERRORS, COHORT_TABLE, RUN_JSON

TRACKED_PACKAGES = (
    "pathosae", "torch", "timm", "openslide-python", "openslide-bin", "monai", "numpy", "pandas",
    "scikit-learn", "statsmodels", "h5py", "tifffile",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunDir:
    """Paths and bookkeeping for one run directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    # ---- paths -------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def cohort_path(self) -> Path:
        return self.root / COHORT_TABLE

    @property
    def cohort_errors_path(self) -> Path:
        return self.root / COHORT_ERRORS

    @property
    def tiles_dir(self) -> Path:
        return self.root / "tiles"

    @property
    def qc_dir(self) -> Path:
        return self.root / "qc"

    def tiles_path(self, slide_id: str) -> Path:
        return self.tiles_dir / f"{slide_id}.h5"

    def features_dir(self, encoder: str) -> Path:
        return self.root / "features" / encoder

    def features_path(self, encoder: str, slide_id: str) -> Path:
        return self.features_dir(encoder) / f"{slide_id}.h5"

    def sae_dir(self, name: str) -> Path:
        return self.root / "sae" / name

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    # ---- run.json ----------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        if not self.run_json.exists():
            return {"stages": {}}
        state = read_json(self.run_json)
        state.setdefault("stages", {})
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.run_json, state)

    def init(self, config: dict[str, Any], manifest: str | None, manifest_hash: str | None) -> None:
        """Create the folder and record what this run is made from (kept across resumes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        state = self.read_state()
        state.update(
            {
                "config": config,
                "versions": package_versions(),
                "manifest": manifest,
                "manifest_sha256": manifest_hash,
            }
        )
        state.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.write_state(state)

    def stage_state(self, stage: str) -> dict[str, Any]:
        return self.read_state()["stages"].get(stage, {})

    def set_stage(self, stage: str, **info: Any) -> None:
        state = self.read_state()
        entry = state["stages"].setdefault(stage, {})
        entry.update(info)
        self.write_state(state)

    def require(self, path: Path, stage: str) -> Path:
        """Fail with a clear message when an input from an earlier stage is missing."""
        if not path.exists():
            raise StageError(
                f"{path} is missing: it is written by the '{stage}' stage. "
                f"Fix: run `pathosae {stage} --run {self.root}` (or `pathosae run`) first."
            )
        return path

    # ---- locking -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str = "run") -> Iterator[None]:
        """An exclusive lock file (pid and host) so two runs on one directory don't collide."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".{name}.lock"
        owner = f"{socket.gethostname()}:{os.getpid()}"
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if _lock_is_stale(path):
                    path.unlink(missing_ok=True)
                    continue
                raise PathosaeError(
                    f"run directory {self.root} is in use by {path.read_text().strip()} "
                    f"(lock {path}). Fix: wait for it, or delete the lock if that process is gone."
                ) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(owner)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def _lock_is_stale(path: Path) -> bool:
    """A lock is stale when it names this host and a pid that no longer runs."""
    try:
        host, pid_text = path.read_text().strip().rsplit(":", 1)
        pid = int(pid_text)
    except (OSError, ValueError):
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
