"""Settings of the edit stage (``edit`` section of the run config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from pathosae.downstream.config import DownstreamConfig, SplitSettings


class EditConfig(SplitSettings):
    """Which edits are measured and how the downstream model is trained."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    specs: list[Path] = Field(
        default_factory=list, description="Extra edit specs (.json/.yaml) measured beside the defaults."
    )
    sae: str | None = Field(None, description="SAE folder under RUN/sae/; null: the only one there.")
    confounders: list[str] | None = Field(
        None, description="Columns to edit out; null: cohort.confounders present in the cohort."
    )
    fit_on: Literal["train", "cohort"] = Field(
        "train", description="Where the default edits' units and directions come from. train: "
        "a scan of the training slides only (no test label touches an edit); cohort: the "
        "confounders stage's scan and directions over every slide (test labels included, so "
        "its test scores are optimistic).",
    )
    flag_alpha: float = Field(0.05, gt=0, lt=1, description="q threshold of units to ablate.")
    max_flagged_units: int = Field(
        64, ge=1, description="At most this many flagged units (smallest q first) per edit."
    )
    random_draws: int = Field(5, ge=1, description="Random-unit edits of the same size.")
    retrain_max_draws: int | None = Field(
        5, ge=0, description="Random draws also measured retrained (each retrains the downstream "
        "model); the others are measured applied only. null: every draw.",
    )
    combat_max_rows: int | None = Field(
        10_000, ge=1, description="Training tiles the ComBat baseline is fitted on (a seeded "
        "draw when there are more; it harmonises every tile). null: all.",
    )
    modes: list[str] = Field(default_factory=lambda: ["applied", "retrained"])
    seed: int = 0
    downstream: DownstreamConfig = Field(default_factory=DownstreamConfig)
    leakage_folds: int = Field(5, ge=2)
