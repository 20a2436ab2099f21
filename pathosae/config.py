"""Run configuration: pydantic models with ``extra="forbid"``, loaded from YAML.

Every section is its own model so a stage receives only the settings it uses, and a hash of that
section (plus the inputs) decides whether the stage's outputs are still valid.

The built-in defaults are the CPU demo's values (``make demo``, a small synthetic cohort), and
configs/default.yaml lists them all, key by key. A real cohort starts from a foundation-model
config (configs/uni.yaml etc.), which sets cohort-scale SAE settings. :func:`resolve_config` is
the one place a command's config is put together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pathosae.edit.config import EditConfig
from pathosae.errors import ConfigError
from pathosae.saeception.config import SAECeptionConfig
from pathosae.scaleout.config import ExecutorConfig

_Model = TypeVar("_Model", bound=BaseModel)


def _defaults(cls: type[_Model]) -> Callable[[], _Model]:
    """A ``default_factory`` building a section from its own defaults (typed without a plugin)."""
    return lambda: cls.model_validate({})


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
    split: SplitFractions = Field(default_factory=_defaults(SplitFractions))
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
    qc_mpp: float = Field(
        8.0,
        gt=0,
        description="Resolution (µm/px) of the QC image with the mask and tile grid; equal to "
        "detection_mpp, the slide is read once for both.",
    )
    num_workers: int = Field(1, ge=1, description="Processes tiling slides in parallel.")


Baseline = Literal["stain_normalised", "random_weights"]
Aggregation = Literal["mean", "frac_active", "quantile"]


def _all_baselines() -> list[Baseline]:
    return ["stain_normalised", "random_weights"]


def _all_aggregations() -> list[Aggregation]:
    return ["mean", "frac_active", "quantile"]


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
    num_workers: int = Field(2, ge=0, description="Processes reading tiles from the slides.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="auto: on CUDA for every model, on CPU for CNNs (measured faster)."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: the model's published precision on CUDA, fp32 on CPU."
    )
    features_dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the stored features."
    )
    name: str | None = Field(
        None,
        description="Feature folder RUN/features/<name>; default: the encoder id, with "
        "'_random' appended for the random-weights control.",
    )

    baselines: list[Baseline] = Field(
        default_factory=_all_baselines,
        description="Baseline feature sets embedded beside the main one: stain_normalised "
        "(tiles through MONAI's Macenko H&E normalisation, RUN/features/<name>_stainnorm) and "
        "random_weights (the seeded random-weights twin, RUN/features/<encoder>_random).",
    )

    def features_name(self) -> str:
        """The folder under RUN/features/ this configuration writes."""
        if self.name:
            return self.name
        return f"{self.encoder}_random" if self.random_weights else self.encoder

    def random_twin_name(self) -> str:
        """The folder of the same encoder's random-weights control."""
        return f"{self.encoder}_random"

    def stainnorm_name(self) -> str:
        """The folder of the stain-normalised baseline of the main features."""
        return f"{self.features_name()}_stainnorm"


class SAEControlsConfig(Section):
    """Controls reported beside each SAE so real structure can be told from pareidolia."""

    random_encoder: bool = Field(
        True, description="Same SAE on the random-weights encoder twin's features (when embedded)."
    )
    permuted: bool = Field(
        True,
        description="Same SAE on per-dimension permutation nulls (within and between slides).",
    )
    seed_stability: bool = Field(
        True, description="Train more seeds and match decoder atoms (Hungarian): per-unit "
        "stability (RUN/sae/<name>/stability.parquet).",
    )
    stability_seeds: int = Field(
        3, ge=2, description="Seeds compared for unit stability (the main SAE's and the next).",
    )
    stable_cosine: float = Field(
        0.7, gt=0, le=1, description="A unit is stable when every other seed has a unit "
        "matching its decoder atom at this |cosine| or more.",
    )
    stable_match: Literal["best", "hungarian"] = Field(
        "best", description="How a unit's match in another seed is found for its stable flag: "
        "best, the nearest decoder atom (a direction learned twice, or split, by one seed still "
        "replicates); hungarian, the one-to-one matching (strict: of two near-duplicate units only "
        "one can match). The summary's mean matched cosine is always the Hungarian one.",
    )
    concept_coverage: bool = Field(
        True, description="Best single unit's AUROC per phenotype / confounder, and units > 0.9."
    )
    max_rows: int = Field(
        50_000, ge=1000, description="Rows sampled for the permutation-null SAEs (each null "
        "is a permuted copy held in RAM; structure-free data needs no more)."
    )
    max_samples: int | None = Field(
        None, ge=1, description="Training samples of each null and random-encoder control SAE "
        "(the stability seeds train in full); null: as many as the main SAE. Each control's "
        "seconds are in the stage summary.",
    )


class SAEConfig(Section):
    """Sparse-autoencoder training on stored features."""

    models: list[str] = Field(
        default_factory=lambda: ["topk"],
        description="SAEs the stage trains, each an architecture name (written to RUN/sae/<name>).",
    )
    architecture: str = Field(
        "topk", description="Architecture for library calls: topk, batchtopk, relu, jumprelu, "
        "matryoshka, topk_offsets, topk_reserved, topk_offsets_reserved (the last three are "
        "confounder-aware).",
    )
    encoder: str | None = Field(
        None, description="Features of this encoder; null: the embedding section's encoder."
    )
    expansion: int = Field(4, ge=1, description="d_sae = expansion * d_in (unless d_sae is set).")
    d_sae: int | None = Field(None, ge=1, description="Number of latents; overrides expansion.")
    k: int = Field(32, ge=1, description="Active latents per sample (TopK, BatchTopK, Matryoshka).")
    l1_coefficient: float = Field(2e-3, ge=0, description="ReLU: L1 penalty (decoder-norm scaled).")
    l0_coefficient: float = Field(5e-3, ge=0, description="JumpReLU: L0 penalty.")
    jumprelu_bandwidth: float = Field(0.05, gt=0, description="JumpReLU: STE kernel width.")
    jumprelu_threshold: float = Field(0.5, gt=0, description="JumpReLU: initial threshold.")
    matryoshka_prefixes: list[int] = Field(
        default_factory=list,
        description="Matryoshka prefix sizes; empty: d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae.",
    )
    confounder_columns: list[str] | None = Field(
        None, description="Confounder-aware SAEs (topk_offsets, topk_reserved, "
        "topk_offsets_reserved): the cohort "
        "columns they are conditioned on (levels from the train split only); null: "
        "cohort.confounders.",
    )
    reserved_per_level: int = Field(
        2, ge=1, description="topk_(offsets_)reserved: latents reserved per level of each confounder (a "
        "block of this x n_levels latents per confounder, outside the TopK budget k).",
    )
    supervised_coefficient: float = Field(
        1.0, ge=0, description="topk_(offsets_)reserved: weight of the cross-entropy of each block's "
        "linear read-out predicting its confounder's level.",
    )
    independence_coefficient: float = Field(
        10.0, ge=0, description="topk_(offsets_)reserved: weight of the linear-kernel HSIC (squared "
        "cross-covariance) between the free latents and each confounder's one-hot, centred "
        "within label.",
    )
    lr: float | None = Field(
        None, gt=0, description="Adam learning rate; null: 2e-4 / sqrt(d_sae / 2^14)."
    )
    warmup_fraction: float = Field(0.02, ge=0, lt=1, description="Linear lr warm-up share.")
    decay_fraction: float = Field(0.2, ge=0, lt=1, description="Final linear decay-to-zero share.")
    batch_size: int = Field(256, ge=1)
    n_samples: int = Field(60_000, ge=1, description="Training samples seen (steps x batch).")
    aux_k: int | None = Field(None, ge=1, description="AuxK latents; null: d_in / 2.")
    aux_coefficient: float = Field(1 / 32, ge=0)
    dead_window: int = Field(
        20_000, ge=1, description="A latent is dead after this many samples without firing."
    )
    redundancy_coefficient: float = Field(
        0.0, ge=0, description="Penalty on squared cosine between co-firing decoder atoms."
    )
    scale_inputs: bool = Field(True, description="Scale so E||x|| = sqrt(d_in); folded at save.")
    init_samples: int = Field(
        16_384, ge=1, description="Rows for the geometric median and the input scale."
    )
    eval_max_rows: int = Field(
        100_000, ge=1, description="Held-out rows used for metrics (a seeded draw when more)."
    )
    max_train_rows: int = Field(
        200_000, ge=1, description="Training tiles held in memory (a seeded uniform draw over "
        "the train slides when the cohort has more); bounds the stage's memory. Never more than "
        "n_samples: rows beyond the samples the SAE sees would not be used.",
    )
    dense_threshold: float = Field(
        0.1, gt=0, le=1, description="A latent is dense if it fires on more than this share."
    )
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Matmul precision of SAE training: auto is bfloat16 autocast on CUDA "
        "(weights, optimiser and loss sums stay float32) and float32 on the CPU.",
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; null: as is.")
    controls: SAEControlsConfig = Field(default_factory=_defaults(SAEControlsConfig))

    @model_validator(mode="after")
    def _check_fractions(self) -> SAEConfig:
        if self.warmup_fraction + self.decay_fraction >= 1:
            raise ValueError("warmup_fraction + decay_fraction must be below 1")
        return self


class ConfoundersConfig(Section):
    """Association scan, leakage probes, PathoROB metrics and confounder directions."""

    variables: list[str] | None = Field(
        None,
        description="Metadata columns to scan; null means cohort.confounders plus the label.",
    )
    covariates: list[str] = Field(
        default_factory=list,
        description="Columns held fixed in every test (e.g. the label), skipped for themselves.",
    )
    variable_types: dict[str, Literal["categorical", "continuous"]] = Field(
        default_factory=dict,
        description="Override the inferred type of a column (text and 2-valued are categorical).",
    )
    aggregations: list[Aggregation] = Field(
        default_factory=_all_aggregations,
        description="Per-slide (and per-patient) summaries of each unit's tile activations.",
    )
    quantile: float = Field(0.9, gt=0, lt=1, description="The high quantile aggregation.")
    active_threshold: float = Field(
        0.0, ge=0, description="A tile counts as active for a unit when its code exceeds this."
    )
    correlation: Literal["pearson", "spearman"] = Field(
        "spearman",
        description="spearman: rank-based tests (units ranked over slides; robust to outlier "
        "slides, which inflate parametric tests at small n); pearson: parametric F and t tests.",
    )
    fdr_alpha: float = Field(0.05, gt=0, lt=1, description="Benjamini-Hochberg level for flags.")
    scan_permutations: int = Field(
        100_000, ge=0,
        description="Most slide permutations behind one test's p-value (sequential: 1,000 for "
        "every test with parametric p <= 0.1, more only while fewer than 10 permuted statistics "
        "reach the observed one; the floor of p is 1/(this + 1)). 0: parametric F/t p-values, "
        "whose tails are too light for sparse units at tens of slides.",
    )
    n_confirm: int = Field(
        10, ge=0, description="Top hits per column confirmed by a mixed model and a permutation."
    )
    n_permutations: int = Field(999, ge=9, description="Permutations of slide-level labels.")
    specific_beyond_confounders: bool = Field(
        True, description="A finding's effect holds the other declared confounders fixed as well "
        "as the label (where the scanner follows the site, a site unit is otherwise also a "
        "scanner finding).",
    )
    specificity_permutations: int = Field(
        20, ge=0, description="Permutations of each confounder among the patients of each label "
        "level: the null of the effect beyond the label (0: no specificity test).",
    )
    min_effect: float = Field(
        0.1, ge=0, le=1, description="Smallest effect beyond the label (partial eta²: share of "
        "a unit's slide-level variance the confounder explains after the label) of a finding.",
    )
    null_repeats: int = Field(
        20, ge=0, description="Repeats of the permuted-metadata null (the whole slide-level scan "
        "on shuffled metadata; each costs about one scan). 0: no null.",
    )
    confirm_tiles_per_slide: int = Field(
        16, ge=1, description="Tiles per slide sampled for the mixed-model confirmation."
    )
    confirm_max_slides: int = Field(
        200, ge=2, description="Most slides (a seeded draw) in each mixed-model confirmation: "
        "its cost grows with the slides, and the slide-level scan has already used them all.",
    )
    k_neighbors: int = Field(10, ge=1, description="k of the PathoROB robustness index.")
    cv_folds: int = Field(5, ge=2, description="Cross-validation folds of the leakage probes.")
    chance_permutations: int = Field(
        5, ge=1, description="Label permutations giving each leakage probe's chance level "
        "(mean and upper percentile); each costs one probe fit per representation.")
    probe_level: Literal["slide", "tile"] = Field(
        "slide", description="Probe slide-level means (default) or sampled tiles."
    )
    max_tiles: int = Field(
        20_000, ge=100, description="Cap on sampled tiles kept for tile-level metrics."
    )
    pathorob_max_tiles: int = Field(
        4_000, ge=100, description="Most sampled tiles (a seeded draw) in the PathoROB metrics: "
        "their probes and neighbour searches are the cost, and a few thousand tiles settle them.",
    )
    site_column: str | None = Field(
        "site", description="Column for leave-one-site-out probes; null to skip them."
    )
    sae: str | None = Field(
        None, description="SAE folder name under RUN/sae/; null picks the only one there."
    )
    combat: bool = Field(True, description="Also score ComBat-harmonised embeddings (baseline).")
    seed: int = 0


class UncertaintyConfig(Section):
    """Patient-level bootstrap intervals on every compared number.

    Used by the effect tables, the SAE-ception metrics and the leakage probes.
    """

    n_bootstrap: int = Field(
        1000, ge=0, description="Bootstrap replicates (patients drawn with replacement); 0: no "
        "intervals (their columns are NaN).",
    )
    level: float = Field(0.95, gt=0, lt=1, description="Coverage of the percentile intervals.")
    seed: int = Field(0, description="Seed of the patient draws (the same draws for every row).")


class PathosaeConfig(Section):
    """The whole run configuration."""

    seed: int = 0
    ground_truth: Path | None = Field(
        default=None,
        description="Folder of a synthetic cohort's ground truth, written by `pathosae synth` "
        "(slides) or `pathosae synth-features` (features only) as <out>/ground_truth; when set, "
        "the sae stage adds planted concepts and the confounders stage scores flagged units "
        "against the planted effects; nothing searches the file system for it.",
    )
    cohort: CohortConfig = Field(default_factory=_defaults(CohortConfig))
    tiling: TilingConfig = Field(default_factory=_defaults(TilingConfig))
    embedding: EmbeddingConfig = Field(default_factory=_defaults(EmbeddingConfig))
    sae: SAEConfig = Field(default_factory=_defaults(SAEConfig))
    executor: ExecutorConfig = Field(default_factory=_defaults(ExecutorConfig))
    confounders: ConfoundersConfig = Field(default_factory=_defaults(ConfoundersConfig))
    edit: EditConfig = Field(default_factory=_defaults(EditConfig))
    saeception: SAECeptionConfig = Field(default_factory=_defaults(SAECeptionConfig))
    uncertainty: UncertaintyConfig = Field(default_factory=_defaults(UncertaintyConfig))

    def section_dump(self, name: str) -> dict[str, Any]:
        """A JSON-able dump of one section, used for hashing stage settings."""
        return getattr(self, name).model_dump(mode="json")


def resolve_config(
    config_path: str | Path | None = None,
    recorded: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> PathosaeConfig:
    """The config a command uses; every command resolves its config here.

    Precedence, highest first: ``overrides`` (command-line flags, nested by section, e.g.
    ``{"embedding": {"device": "cpu"}}``), then the YAML file ``config_path`` (``--config``), then
    ``recorded`` (the config in the run's run.json), then the built-in defaults. ``--config`` and
    the recorded config are not merged: a given file replaces the recorded config, and the keys
    it leaves out take their built-in defaults, as ``pathosae config --config FILE`` prints.
    """
    if config_path is not None or recorded is None:
        return load_config(config_path, overrides)
    data = _deep_merge(recorded, overrides) if overrides else recorded
    return _validate(data, "recorded in run.json")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PathosaeConfig:
    """Load a YAML config (the built-in defaults when ``path`` is None) and validate it.

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
    return _validate(data, source)


def _validate(data: dict[str, Any], source: str) -> PathosaeConfig:
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


def config_yaml(cfg: PathosaeConfig | None = None) -> str:
    """The config as YAML with each key's description as a comment (``pathosae config``)."""
    cfg = cfg or PathosaeConfig()
    return "\n".join(_yaml_lines(cfg, 0)) + "\n"


def _yaml_lines(model: BaseModel, indent: int) -> list[str]:
    lines = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip().splitlines()
            comment = f"  # {doc[0]}" if doc and indent == 0 else ""
            lines.append(f"{pad}{name}:{comment}")
            lines.extend(_yaml_lines(value, indent + 1))
            if indent == 0:
                lines.append("")
            continue
        dumped = yaml.safe_dump(
            {name: _plain(value)}, default_flow_style=True, sort_keys=False, width=1000
        ).strip()
        dumped = dumped[1:-1] if dumped.startswith("{") else dumped
        comment = f"  # {field.description}" if field.description else ""
        lines.append(f"{pad}{dumped}{comment}")
    return lines


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def analysed_features(cfg: PathosaeConfig) -> str:
    """The feature set (RUN/features/<name>) the SAE is trained on and every later stage reads:
    ``sae.encoder`` when set, else the embedding section's folder (``embedding.name`` for
    imported features, else the encoder id)."""
    return cfg.sae.encoder or cfg.embedding.features_name()
