"""Run configuration: pydantic models with ``extra="forbid"``, loaded from YAML.

Every section is its own model so a stage receives only the settings it uses, and a hash of that
section (plus the inputs) decides whether the stage's outputs are still valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pathosae.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class SplitFractions(Section):
    train: float = Field(0.6, ge=0, le=1)
    val: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must add up to 1, got {total:g}")
        return self


class CohortConfig(Section):
    """How manifest columns are read."""

    label: str | None = Field("label", description="Task-label column; null for none.")
    confounders: list[str] = Field(
        default_factory=lambda: ["site", "scanner"],
        description="Metadata columns treated as confounders (scanner, site, stain batch, ...).",
    )
    split: SplitFractions = Field(default_factory=SplitFractions)
    extensions: list[str] = Field(
        default_factory=lambda: [
            ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide",
            ".bif", ".dcm",
        ],
        description="Slide file extensions accepted (lower case).",
    )


class TilingConfig(Section):
    """Tissue detection and tile geometry (physical units, not pyramid levels)."""

    target_mpp: float = Field(0.5, gt=0, description="Tile resolution in µm/px (0.5 = 20x).")
    tile_px: int = Field(224, gt=0, description="Tile edge in pixels at target_mpp.")
    tissue_threshold: float = Field(
        0.5, ge=0, le=1, description="Minimum tissue fraction of a tile to keep it."
    )
    detection_mpp: float = Field(
        8.0, gt=0, description="Resolution (µm/px) of the thumbnail used for tissue detection."
    )
    saturation_threshold: int = Field(
        20, ge=0, le=255, description="HSV saturation (0-255) above which a pixel is tissue."
    )
    blur_px: int = Field(7, ge=1, description="Median blur size (odd) on the detection thumbnail.")
    min_tissue_area_um2: float = Field(
        20_000.0, ge=0, description="Tissue specks smaller than this (µm²) are dropped."
    )
    max_hole_area_um2: float = Field(
        20_000.0, ge=0, description="Holes smaller than this (µm²) inside tissue are filled."
    )
    num_workers: int = Field(1, ge=1, description="Processes tiling slides in parallel.")


class EmbeddingConfig(Section):
    """Which encoder embeds the tiles, and how."""

    encoder: str = Field("efficientnet_lite0", description="Encoder id from the registry.")
    weights: Path | None = Field(
        None, description="Local weights file (.safetensors/.bin/.pth); the default needs none."
    )
    random_weights: bool = Field(
        False, description="Use the encoder's seeded random-weights twin (a control)."
    )
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(2, ge=0)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    channels_last: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


class SAEConfig(Section):
    """Sparse-autoencoder training on stored features (filled in by the SAE stage)."""

    model_config = ConfigDict(extra="allow")


class PathosaeConfig(Section):
    """The whole run configuration."""

    seed: int = 0
    cohort: CohortConfig = Field(default_factory=CohortConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    sae: SAEConfig = Field(default_factory=SAEConfig)

    def section_dump(self, name: str) -> dict[str, Any]:
        """A JSON-able dump of one section, used for hashing stage settings."""
        return getattr(self, name).model_dump(mode="json")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PathosaeConfig:
    """Load a YAML config (the packaged default when ``path`` is None) and validate it.

    Errors name the file and the offending key, e.g. ``tiling.tile_pxx: extra inputs are not
    permitted``.
    """
    data: dict[str, Any] = {}
    source = str(path) if path is not None else "<built-in defaults>"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist. Fix: pass an existing YAML file.")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections at the top level.")
        data = loaded
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return PathosaeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section; see configs/default.yaml)"
        lines.append(f"  - {key}: {msg}")
    return "\n".join(lines)
