"""Settings of the downstream adapter + attention-MIL model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
