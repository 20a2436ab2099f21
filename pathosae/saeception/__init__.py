"""SAE-ception: sharpen a downstream model's adapter layer towards SAE-decoded class targets,
with confounder injection (flagged units never kept, site directions projected out, site-balanced
class means) and controls (no auxiliary loss, random target, plain SAE-ception)."""

from __future__ import annotations

from pathosae._lazy import lazy_exports

_EXPORTS = {
    "SAECeptionConfig": "pathosae.saeception.config",
    "VARIANTS": "pathosae.saeception.config",
    "class_means": "pathosae.saeception.targets",
    "sharpened_targets": "pathosae.saeception.targets",
    "top_units": "pathosae.saeception.targets",
}

__all__ = ["VARIANTS", "SAECeptionConfig", "class_means", "sharpened_targets", "top_units"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
