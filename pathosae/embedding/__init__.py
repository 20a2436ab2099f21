"""Embedding: read tiles from the slides and turn them into feature files with an encoder.

Imported lazily: readers of feature files (``pathosae.features``) need not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathosae.config import PathosaeConfig
    from pathosae.run import RunDir
    from pathosae.types import OnError


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, slide_ids: list[str] | None = None
) -> dict[str, Any]:
    """The ``embed`` pipeline stage (see :mod:`pathosae.embedding.stage`)."""
    from pathosae.embedding.stage import run_stage as _run_stage

    return _run_stage(run, cfg, on_error, slide_ids=slide_ids)


__all__ = ["run_stage"]
