"""SAE-ception: sharpen a downstream model's adapter layer towards SAE-decoded class targets,
with confounder injection (flagged units never kept, site directions projected out, site-balanced
class means) and controls (no auxiliary loss, random target, plain SAE-ception)."""

from __future__ import annotations

_EXPORTS = {
    "SAECeptionConfig": "pathosae.saeception.config",
    "VARIANTS": "pathosae.saeception.config",
    "class_means": "pathosae.saeception.targets",
    "sharpened_targets": "pathosae.saeception.targets",
    "top_units": "pathosae.saeception.targets",
}

__all__ = ["VARIANTS", "SAECeptionConfig", "class_means", "sharpened_targets", "top_units"]


def __getattr__(name: str) -> object:
    """Import submodules on first use, so reading the config does not import torch."""
    import importlib

    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
