"""What the app may read: files inside the run directory and the cohort's slide files, nothing else.

Every path the app opens goes through :class:`PathGuard`; a crafted slide id or file name that
resolves elsewhere (``..``, an absolute path, a symlink leading out) raises :class:`AccessError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pathosae.errors import PathosaeError


class AccessError(PathosaeError):
    """A requested path lies outside the run directory and is not one of the cohort's slides."""


class PathGuard:
    """Resolves and checks paths against the run root and the cohort's slide paths."""

    def __init__(self, root: str | os.PathLike[str], slide_paths: Iterable[str] = ()) -> None:
        self.root = Path(root).resolve()
        self._slides = frozenset(str(Path(p).resolve()) for p in slide_paths)

    def with_slides(self, slide_paths: Iterable[str]) -> PathGuard:
        return PathGuard(self.root, slide_paths)

    def run_file(self, *parts: str | os.PathLike[str]) -> Path:
        """``root/parts...`` resolved; it must stay inside the run directory."""
        for part in parts:
            if Path(part).is_absolute():
                raise AccessError(f"{part!r} is an absolute path; the app reads only files of the "
                                  f"run {self.root} given relative to it.")
        path = self.root.joinpath(*parts).resolve()
        if path != self.root and self.root not in path.parents:
            raise AccessError(f"{path} is outside the run directory {self.root}; the app reads "
                              "only files of the run and the cohort's slides.")
        return path

    def slide_file(self, path: str | os.PathLike[str]) -> Path:
        """A slide path; it must be exactly one of the cohort's slide files."""
        resolved = Path(path).resolve()
        if str(resolved) not in self._slides:
            raise AccessError(f"{path} is not a slide of this run's cohort; the app opens only "
                              "the slide files listed in cohort.parquet.")
        return resolved
