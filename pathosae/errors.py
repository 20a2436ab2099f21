"""Errors that name the file or row at fault and say how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


class PathosaeError(Exception):
    """Base class for every error pathosae raises on purpose (the CLI prints these without a trace)."""


class ConfigError(PathosaeError):
    """A config file is unreadable or has a wrong, unknown or missing key."""


@dataclass(frozen=True)
class RowError:
    """One problem in one manifest row (row numbers count the header as row 1, like a spreadsheet)."""

    row: int | None
    column: str | None
    message: str
    fix: str
    slide_id: str | None = None

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.slide_id:
            where.append(f"slide {self.slide_id!r}")
        if self.column:
            where.append(f"column {self.column!r}")
        prefix = ", ".join(where) or "manifest"
        return f"{prefix}: {self.message}. Fix: {self.fix}"


class ManifestError(PathosaeError):
    """A manifest has one or more bad rows or columns; every problem is listed at once."""

    def __init__(self, manifest: str, errors: list[RowError]) -> None:
        self.manifest = manifest
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{len(errors)} problem(s) in manifest {manifest}:\n{lines}")


class SlideError(PathosaeError):
    """A slide cannot be opened or processed; the message names the file and the reason."""

    def __init__(self, slide_id: str, path: str, reason: str, fix: str = "") -> None:
        self.slide_id = slide_id
        self.path = path
        self.reason = reason
        self.fix = fix
        tail = f" Fix: {fix}" if fix else ""
        super().__init__(f"slide {slide_id!r} ({path}): {reason}.{tail}")


class StageError(PathosaeError):
    """A pipeline stage cannot run (missing inputs from an earlier stage, bad settings)."""
