"""Embedding: read tiles from the slides and turn them into feature files with an encoder.

Exports are lazy: readers of feature files (``pathosae.features``) need not load torch.
"""

from __future__ import annotations

from pathosae._lazy import lazy_exports

_EXPORTS = {"run_stage": "pathosae.embedding.stage"}

__all__ = ["run_stage"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
