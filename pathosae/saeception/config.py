"""Settings of the SAE-ception stage (``saeception`` section of the run config)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from pathosae.downstream.config import DownstreamConfig, SplitSettings

Variant = Literal["no_aux", "random_target", "plain", "injected", "aware"]
VARIANTS: tuple[Variant, ...] = ("no_aux", "random_target", "plain", "injected")
"""The default variants; ``aware`` (a confounder-aware cycle SAE) is added on request."""


class SAECeptionConfig(SplitSettings):
    """SAE-ception cycles, confounder injection and controls."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cycles: int = Field(3, ge=1, description="SAE-ception cycles after the base model.")
    variants: list[Variant] = Field(
        default_factory=lambda: list(VARIANTS),
        description="no_aux (same training, no auxiliary loss), random_target (random unit "
        "vectors), plain (SAE-ception), injected (SAE-ception with confounder injection), aware "
        "(SAE-ception whose targets come from a confounder-aware SAE told the training slides' "
        "confounders: its reserved block is never kept, and it decodes with the mean offsets).",
    )
    aware_architecture: Literal["topk_reserved", "topk_offsets", "topk_offsets_reserved"] = Field(
        "topk_reserved", description="The confounder-aware SAE of the aware variant.",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    n_top: int = Field(25, ge=1, description="Units kept per class in the target (top-N).")
    aux_weight: float = Field(0.5, ge=0, description="λ of the auxiliary loss.")
    aux_weight_grid: list[float] = Field(
        default_factory=lambda: [0.01, 0.1, 0.2, 0.3, 0.5],
        description="λ values tried per variant (one cycle, first seed), the best on the "
        "selection split kept; empty: aux_weight as given.",
    )
    n_top_grid: list[int] = Field(
        default_factory=lambda: [25, 256],
        description="Top-N values tried with each λ (capped at the SAE width); empty: n_top.",
    )
    selection_fraction: float = Field(
        0.25, gt=0, lt=1, description="Share of training patients (per class) held out to "
        "choose λ and N; neither test split is used for the choice.",
    )
    aux_loss: Literal["cosine", "mse"] = Field("cosine", description="1 − cos(h, target) or MSE.")
    cycle_epochs: int = Field(20, ge=1, description="Training epochs of each cycle's model.")
    warm_start: bool = Field(True, description="Each cycle fine-tunes the previous model.")
    downstream: DownstreamConfig = Field(default_factory=DownstreamConfig)

    # The cycle's SAE (pathosae.sae.train_sae).
    sae_architecture: Literal["topk", "relu"] = "topk"
    sae_expansion: int = Field(4, ge=1, description="d_sae = expansion × adapter width.")
    sae_k: int = Field(8, ge=1, description="TopK active units.")
    sae_samples: int = Field(100_000, ge=1, description="Samples seen by each cycle's SAE.")
    sae_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Further SAEConfig fields for the cycle SAEs."
    )

    # Confounder injection.
    confounders: list[str] | None = Field(
        None, description="Columns the injection removes; null: the site column plus "
        "cohort.confounders present in the cohort.",
    )
    inject_flagged: bool = Field(True, description="Never keep scan-flagged units.")
    inject_directions: bool = Field(True, description="Project confounder directions out.")
    inject_site_balanced: bool = Field(True, description="Top-N from site-balanced class means.")
    flag_alpha: float = Field(0.05, gt=0, lt=1, description="BH q threshold of flagged units.")
    flag_rule: Literal["q", "dominant"] = Field(
        "dominant", description="q: drop every unit with q ≤ flag_alpha; dominant: only those "
        "where the confounder's partial eta² (given the label) exceeds the label's (given it).",
    )
    direction_method: Literal["class_site_means", "leace"] = "class_site_means"
    min_cell_tiles: int = Field(
        20, ge=1, description="Tiles a class-and-site cell needs to count in balanced means."
    )

    # Data and evaluation.
    eval_max_tiles: int = Field(3000, ge=10, description="Tiles sampled for clustering metrics.")
    leakage_folds: int = Field(5, ge=2)

    # Adapter-layer edits of each variant's final-cycle model through its cycle SAE.
    adapter_edits: bool = Field(
        True, description="Ablate the cycle SAE's site-flagged units of each variant's last-cycle "
        "model, and random units as many (RUN/saeception/adapter_edits.parquet).",
    )
    adapter_edit_seeds: Literal["first", "all"] = Field(
        "all", description="Models of the first seed only, or of every seed."
    )
    adapter_edit_random_draws: int = Field(5, ge=1, description="Random-unit edits per model.")


ADAPTER_EDIT_FIELDS = {"adapter_edits", "adapter_edit_seeds", "adapter_edit_random_draws"}
"""Settings that change only the adapter-edit table, not the trained models."""
