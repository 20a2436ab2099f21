"""Settings of the downstream adapter + attention-MIL model and of its train/test splits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DownstreamConfig(BaseModel):
    """How the downstream model is built and trained (shared by the edit and SAE-ception stages)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    hidden_dim: int = Field(64, ge=2, description="Width of the adapter's hidden layer.")
    attention_dim: int = Field(32, ge=1, description="Width of the gated-attention branch.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter's hidden layer.")
    epochs: int = Field(40, ge=1, description="Passes over the training slides.")
    batch_slides: int = Field(16, ge=1, description="Slides per optimisation step.")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    max_tiles_per_slide: int = Field(
        256, ge=1, description="Tiles sampled per slide (seeded) so bags fit in memory."
    )
    device: str = Field(
        "auto", description="auto, cpu, cuda or cuda:N: where the model trains (it predicts on "
        "the CPU, so figures do not depend on it beyond floating-point order).",
    )
    max_tiles: int = Field(
        100_000, ge=1, description="Tiles held in memory in all; the per-slide sample shrinks to "
        "fit (bounds memory for cohorts of thousands of slides: a stage holds the bags and one "
        "edited copy, 0.3 GB each at 768 dims).",
    )


LEAVE_ONE_SITE_OUT = "leave_one_site_out"


class SplitSettings(BaseModel):
    """Which slides train the downstream model and which test it (shared by the edit and
    SAE-ception stages). ``shifted_split: leave_one_site_out`` makes every slide of one site the
    shifted test, for cohorts whose manifest has no split with the label–site link broken."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    site_column: str = "site"
    train_split: str = "train"
    normal_split: str = Field("val", description="Held-out split with the training correlation.")
    derived_normal_fraction: float = Field(
        0.2, gt=0, lt=1, description="When no slide is in normal_split (a manifest with only "
        "train and test): the share of training patients (per class, seeded) held out as the "
        "normal test instead; the tables' normal_test column says so.",
    )
    shifted_split: str = Field(
        "test", description="Split where the label–site link is broken, or leave_one_site_out: "
        "every slide of held_out_site is the shifted test and leaves the train and normal splits.",
    )
    held_out_site: str | None = Field(
        None, description="With shifted_split: leave_one_site_out, the site held out; null: the "
        "site whose label mix differs most from the rest of the cohort (ties: first by name) "
        "among those whose removal leaves every class in training.",
    )

    @model_validator(mode="after")
    def _held_out_site_needs_loso(self) -> SplitSettings:
        if self.held_out_site is not None and self.shifted_split != LEAVE_ONE_SITE_OUT:
            raise ValueError(
                f"held_out_site is set but shifted_split is {self.shifted_split!r}; set "
                f"shifted_split: {LEAVE_ONE_SITE_OUT} or held_out_site: null"
            )
        return self
