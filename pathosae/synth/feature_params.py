"""Settings of the feature-level synthetic cohort (``pathosae synth-features``), and level names.

Every knob that changes the features or the design is a field of :class:`FeatureSynthParams`;
unknown keys are an error. Norms and magnitudes are in the units of a unit-norm atom, so the same
settings mean the same signal-to-noise ratio at any ``dim``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FEATURE_LABELS: tuple[str, str] = ("normal", "tumour")
"""Slide labels: class 0 and class 1."""

CONFOUNDERS: tuple[str, ...] = ("site", "scanner", "stain_batch")
"""The planted confounder variables, in the order their atoms and directions are stored."""


def level_name(variable: str, level: int) -> str:
    """The manifest value of one level: site_A, scanner_1, batch_1."""
    if variable == "site":
        return f"site_{chr(ord('A') + level)}"
    if variable == "scanner":
        return f"scanner_{level + 1}"
    return f"batch_{level + 1}"


class FeatureSynthParams(BaseModel):
    """Knobs of :func:`pathosae.synth.features.generate_feature_cohort` (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Size.
    tiles: int = Field(500, ge=1, description="Mean number of tiles per slide.")
    tile_jitter: float = Field(
        0.2, ge=0, lt=1, description="Tiles per slide vary uniformly within ±this fraction of tiles."
    )
    dim: int = Field(1024, ge=2, description="Feature width (the encoder's embedding size).")

    # Biology and the label.
    n_biology_atoms: int = Field(64, ge=2, description="Unit-norm biology atoms in the dictionary.")
    n_label_atoms: int = Field(
        8, ge=0, description="Biology atoms whose rate follows the label (half per class, even)."
    )
    active_atoms: int = Field(
        8, ge=1, description="Biology atoms drawn per tile (with replacement, by the slide's rates)."
    )
    label_effect: float = Field(
        3.0, ge=1, description="Rate ratio of a label atom on slides of its class."
    )
    rate_spread: float = Field(
        0.5, ge=0, description="SD of the log base rates of the biology atoms (cohort-wide)."
    )
    slide_rate_jitter: float = Field(
        0.3, ge=0, description="SD of the slide-to-slide log-rate noise of each biology atom."
    )
    noise: float = Field(
        0.5, ge=0, description="Expected norm of each tile's isotropic noise (atoms have norm 1)."
    )

    # Confounders: levels, planted atoms (per tile) and dense shifts (per slide).
    n_sites: int = Field(4, ge=1, le=26, description="Tissue source sites.")
    n_scanners: int = Field(2, ge=1, le=26, description="Scanners.")
    n_stain_batches: int = Field(3, ge=1, le=26, description="Stain batches (independent of site).")
    site_atoms: int = Field(2, ge=0, description="Planted atoms per site level.")
    scanner_atoms: int = Field(2, ge=0, description="Planted atoms per scanner level.")
    stain_atoms: int = Field(2, ge=0, description="Planted atoms per stain-batch level.")
    confounder_rate: float = Field(
        0.3, gt=0, le=1, description="Probability that each of a slide's planted atoms fires on a tile."
    )
    confounder_scale: float = Field(
        1.0, ge=0, description="Mean magnitude of a firing planted atom (exponential)."
    )
    site_shift: float = Field(1.0, ge=0, description="Norm of each site's dense slide-level shift.")
    scanner_shift: float = Field(
        0.75, ge=0, description="Norm of each scanner's dense slide-level shift."
    )
    stain_shift: float = Field(
        0.5, ge=0, description="Norm of each stain batch's dense slide-level shift."
    )
    scanner_follows_site: float = Field(
        0.5, ge=0, le=1, description="Probability a slide is scanned on its site's own scanner."
    )

    # Design of the splits.
    confounding: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Label-site confounding in train/val: with this probability a patient's site "
        "is its label's site, else uniform (P(match) = c + (1 - c) / n_sites).",
    )
    test_fraction: float = Field(0.25, ge=0, lt=1, description="Patients in the shifted test split.")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="Patients in the validation split.")
    test_shift: Literal["balanced", "reversed"] = Field(
        "balanced",
        description="Test split sites: balanced (independent of the label) or reversed (each "
        "label sent to the other label's site with the training confounding).",
    )
    second_slide_fraction: float = Field(
        0.25, ge=0, le=1, description="Fraction of patients with two slides (same label and site)."
    )

    @model_validator(mode="after")
    def _check(self) -> FeatureSynthParams:
        if self.n_label_atoms > self.n_biology_atoms:
            raise ValueError(f"n_label_atoms ({self.n_label_atoms}) exceeds n_biology_atoms "
                             f"({self.n_biology_atoms})")
        if self.n_label_atoms % 2:
            raise ValueError(f"n_label_atoms must be even (half per class), got {self.n_label_atoms}")
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must leave patients for training")
        return self

    def levels(self, variable: str) -> int:
        """Number of levels of a confounder variable."""
        return {"site": self.n_sites, "scanner": self.n_scanners,
                "stain_batch": self.n_stain_batches}[variable]

    def atoms_per_level(self, variable: str) -> int:
        return {"site": self.site_atoms, "scanner": self.scanner_atoms,
                "stain_batch": self.stain_atoms}[variable]

    def shift(self, variable: str) -> float:
        return {"site": self.site_shift, "scanner": self.scanner_shift,
                "stain_batch": self.stain_shift}[variable]
