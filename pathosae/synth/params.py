"""Settings of the synthetic cohort: every knob that changes the pixels or the design."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PHENOTYPES: tuple[str, ...] = ("tumour", "stroma", "lymphocyte", "necrosis", "fat")
"""Tissue phenotypes; in phenotype maps class 0 is background glass and class k+1 is PHENOTYPES[k]."""

LABELS: tuple[str, str] = ("low", "high")
"""Slide labels; "high" slides carry a large fraction of ``label_phenotype``."""


class SynthParams(BaseModel):
    """Knobs of :func:`pathosae.synth.generate_cohort` (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Geometry.
    slide_px_min: int = Field(2000, ge=256, description="Smallest slide side (level-0 px).")
    slide_px_max: int = Field(3000, ge=256, description="Largest slide side (level-0 px).")
    mpp: float = Field(0.5, gt=0, description="Level-0 resolution written in the TIFF tags (µm/px).")
    tissue_cover: tuple[float, float] = Field(
        (0.45, 0.65), description="Range of the fraction of the slide covered by tissue."
    )

    # Biology and the label.
    label_phenotype: Literal["tumour", "stroma", "lymphocyte", "necrosis", "fat"] = Field(
        "tumour", description="Phenotype whose tissue fraction decides the label."
    )
    high_fraction: tuple[float, float] = Field(
        (0.40, 0.60), description="Range of the label phenotype's tissue fraction on 'high' slides."
    )
    low_fraction: tuple[float, float] = Field(
        (0.10, 0.30), description="Range of the label phenotype's tissue fraction on 'low' slides."
    )
    second_slide_fraction: float = Field(
        0.25, ge=0, le=1, description="Fraction of patients with two slides (same label)."
    )

    # Confounders.
    n_sites: int = Field(3, ge=1, le=26, description="Sites (hospitals); each stains differently.")
    n_scanners: int = Field(2, ge=1, le=26, description="Scanners; each has its own optics.")
    batches_per_site: int = Field(2, ge=1, description="Stain batches nested in each site.")
    site_stain_strength: float = Field(
        1.0, ge=0, description="Scale of the site stain effect (0: every site stains alike)."
    )
    batch_stain_strength: float = Field(
        0.3, ge=0, description="Scale of the stain-batch effect relative to the site effect."
    )
    slide_stain_jitter: float = Field(
        0.03, ge=0, description="SD of slide-to-slide log stain concentration noise (not a site)."
    )
    scanner_strength: float = Field(
        1.0, ge=0, description="Scale of the scanner effect (0: every scanner images alike)."
    )
    scanner_follows_site: float = Field(
        0.7, ge=0, le=1, description="Probability a slide is scanned on its site's own scanner."
    )
    jpeg_quality: tuple[int, int] = Field(
        (70, 95), description="JPEG quality range spanned by the scanners."
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
        description="Test split sites: balanced (independent of label) or reversed (each label "
        "sent to the other label's site with the training confounding).",
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> SynthParams:
        pairs = {
            "slide_px": (self.slide_px_min, self.slide_px_max),
            "tissue_cover": self.tissue_cover,
            "high_fraction": self.high_fraction,
            "low_fraction": self.low_fraction,
            "jpeg_quality": self.jpeg_quality,
        }
        for name, (low, high) in pairs.items():
            if low > high:
                raise ValueError(f"{name}: minimum {low} is above maximum {high}")
        for name in ("tissue_cover", "high_fraction", "low_fraction"):
            low, high = getattr(self, name)
            if not 0 < low <= high < 1:
                raise ValueError(f"{name}: values must lie strictly between 0 and 1")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError("jpeg_quality: values must lie between 1 and 100")
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must leave patients for training")
        return self
