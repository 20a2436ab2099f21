"""Confounder edits: SAE-code operations that keep the reconstruction error, embedding-space
projections and LEACE, declared as composable specs and measured in one effect table."""

from __future__ import annotations

from pathosae._lazy import lazy_exports

_EXPORTS = {
    "Candidate": "pathosae.edit.effects",
    "EditConfig": "pathosae.edit.config",
    "EditSpec": "pathosae.edit.spec",
    "Editor": "pathosae.edit.editor",
    "ablate_units": "pathosae.edit.ops",
    "apply_code_edit": "pathosae.edit.ops",
    "clamp_units": "pathosae.edit.ops",
    "draw_random_units": "pathosae.edit.editor",
    "effect_table": "pathosae.edit.effects",
    "project_code": "pathosae.edit.ops",
    "project_out": "pathosae.edit.ops",
    "scale_units": "pathosae.edit.ops",
}

__all__ = [
    "Candidate",
    "EditConfig",
    "EditSpec",
    "Editor",
    "ablate_units",
    "apply_code_edit",
    "clamp_units",
    "draw_random_units",
    "effect_table",
    "project_code",
    "project_out",
    "scale_units",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
