"""What each pipeline stage needs before it starts, in one table, checked at preflight.

A stage may need the slide files (tile, embed), encoder weights (embed), stored features (every
stage after embedding, when embed does not run in the same call), cohort columns (the label, the
site and confounder columns the config names) and splits with slides. :func:`check_needs` checks
every requested stage against :data:`STAGE_NEEDS` before any work, with the same row/column/fix
errors the cohort stage gives, so a run never stops at its fourth stage for want of a column.

The cohort facts come from the manifest when the cohort stage runs in the same call (its header,
its explicit splits and the fractions of the automatic split), else from RUN/cohort.parquet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pathosae.cohort.manifest import (
    FEATURES_ONLY_FIX,
    SPLITS,
    missing_path_column,
    read_manifest,
    resolve_path,
    slide_file_present,
)
from pathosae.config import PathosaeConfig, analysed_features
from pathosae.downstream.config import LEAVE_ONE_SITE_OUT, SplitSettings
from pathosae.errors import ConfigError, ManifestError, RowError, StageError
from pathosae.run import RunDir
from pathosae.schema import MPP, PATH, PATIENT_ID, SLIDE_ID, SPLIT
from pathosae.types import OnError

PIXEL_STAGES = ("tile", "embed")
LISTED = 5  # slides named in an error; the rest are counted


@dataclass(frozen=True)
class ColumnNeed:
    """A cohort column a stage reads, and the config key that names it."""

    column: str
    key: str


@dataclass(frozen=True)
class SplitNeed:
    """Splits a stage reads: each of ``required`` must have slides, and one of ``any_of``."""

    required: tuple[str, ...]
    any_of: tuple[str, ...] = ()
    keys: str | None = None  # the config keys naming them (None: fixed names)


def _none(_cfg: PathosaeConfig) -> list[ColumnNeed]:
    return []


def _no_splits(_cfg: PathosaeConfig) -> SplitNeed | None:
    return None


@dataclass(frozen=True)
class StageNeeds:
    """One row of the table: what a stage reads besides the config."""

    cohort: bool = True  # RUN/cohort.parquet (or the cohort stage in the same call)
    pixels: bool = False  # the slide files
    weights: bool = False  # the encoder and its weights file
    features: Callable[[PathosaeConfig], str] | None = None  # RUN/features/<name>/
    columns: Callable[[PathosaeConfig], list[ColumnNeed]] = field(default=_none)
    splits: Callable[[PathosaeConfig], SplitNeed | None] = field(default=_no_splits)


# ---- the columns, splits and features each analysis stage reads ------------------------------
def _label(cfg: PathosaeConfig, stage: str) -> list[ColumnNeed]:
    if cfg.cohort.label is None:
        raise ConfigError(
            f"cohort.label is null, but the {stage} stage trains a classifier of the label. "
            "Fix: set cohort.label to the manifest's label column."
        )
    return [ColumnNeed(cfg.cohort.label, "cohort.label")]


def _confounder_columns(cfg: PathosaeConfig) -> list[ColumnNeed]:
    ccfg = cfg.confounders
    if ccfg.variables is not None:
        named = [ColumnNeed(c, "confounders.variables") for c in ccfg.variables]
    else:
        named = [ColumnNeed(c, "cohort.confounders") for c in cfg.cohort.confounders]
        named += [ColumnNeed(cfg.cohort.label, "cohort.label")] if cfg.cohort.label else []
    return named + [ColumnNeed(c, "confounders.covariates") for c in ccfg.covariates]


def _downstream_columns(cfg: PathosaeConfig, section: str, stage: str) -> list[ColumnNeed]:
    settings: SplitSettings = getattr(cfg, section)
    return [*_label(cfg, stage), ColumnNeed(settings.site_column, f"{section}.site_column")]


def _downstream_splits(settings: SplitSettings, section: str) -> SplitNeed:
    """Train and shifted splits; a missing normal split is derived from training patients
    (:func:`pathosae.downstream.splits.derive_normal_split`), so it is not required."""
    required = [settings.train_split]
    if settings.shifted_split != LEAVE_ONE_SITE_OUT:
        required.append(settings.shifted_split)
    return SplitNeed(tuple(required),
                     keys=f"{section}.train_split / {section}.shifted_split")


def _encoder_features(cfg: PathosaeConfig) -> str:
    return analysed_features(cfg)


def _sae_features(cfg: PathosaeConfig) -> str:
    return analysed_features(cfg)


STAGE_NEEDS: dict[str, StageNeeds] = {
    "cohort": StageNeeds(cohort=False),
    "tile": StageNeeds(pixels=True),
    "embed": StageNeeds(pixels=True, weights=True),
    # The SAE trains on train-split tiles and measures on val and test ones (either will do).
    "sae": StageNeeds(features=_sae_features,
                      splits=lambda _cfg: SplitNeed(("train",), ("val", "test"))),
    "confounders": StageNeeds(features=_encoder_features, columns=_confounder_columns),
    "edit": StageNeeds(
        features=_encoder_features,
        columns=lambda cfg: _downstream_columns(cfg, "edit", "edit"),
        splits=lambda cfg: _downstream_splits(cfg.edit, "edit"),
    ),
    "sharpen": StageNeeds(
        features=_encoder_features,
        columns=lambda cfg: _downstream_columns(cfg, "saeception", "sharpen"),
        splits=lambda cfg: _downstream_splits(cfg.saeception, "saeception"),
    ),
    "report": StageNeeds(cohort=False),
}


# ---- what the cohort offers ---------------------------------------------------------------------
@dataclass(frozen=True)
class CohortFacts:
    """The columns, splits and slide paths a run's stages will find in its cohort table."""

    source: Path  # the manifest (cohort stage in this call) or RUN/cohort.parquet
    manifest: str  # named in column errors
    columns: frozenset[str]
    splits: frozenset[str]
    slides: pd.DataFrame  # slide_id, manifest_row, path (resolved; '' for none)
    from_manifest: bool


def cohort_facts(run: RunDir, cfg: PathosaeConfig, cohort_runs: bool) -> CohortFacts | None:
    """The facts of the manifest (``cohort_runs``) or of the written cohort table; None when the
    run names no manifest or one without rows or slide ids (the cohort stage then says so)."""
    manifest = run.read_state().get("manifest")
    if cohort_runs:
        return _manifest_facts(Path(manifest), cfg) if manifest else None
    if not run.cohort_path.is_file():
        raise StageError(
            f"the cohort table {run.cohort_path} does not exist. Fix: run "
            f"`pathosae cohort --manifest cohort.csv --out {run.root}` first (or include cohort "
            "in --stages)."
        )
    table = pd.read_parquet(run.cohort_path)
    splits = table[SPLIT].astype(str) if SPLIT in table.columns else pd.Series(dtype=str)
    paths = table[PATH].fillna("").astype(str) if PATH in table.columns else ""
    return CohortFacts(
        run.cohort_path, str(manifest or run.cohort_path), frozenset(map(str, table.columns)),
        frozenset(splits), _slide_frame(table, paths), from_manifest=False,
    )


def _manifest_facts(manifest: Path, cfg: PathosaeConfig) -> CohortFacts | None:
    frame = read_manifest(manifest)
    if SLIDE_ID not in frame.columns or frame.empty:
        return None  # the cohort stage names what is wrong, row by row
    paths = [resolve_path(manifest, p) for p in frame[PATH]] if PATH in frame.columns else ""
    given = frame[SPLIT] if SPLIT in frame.columns else pd.Series("", index=frame.index)
    splits = set(given[given.isin(SPLITS)])
    if not given.isin(SPLITS).all():  # the rest are assigned by cohort.split's fractions
        fractions = cfg.cohort.split
        splits |= {name for name in SPLITS if getattr(fractions, name) > 0}
    columns = {*frame.columns, PATIENT_ID, SPLIT, MPP}
    return CohortFacts(manifest, str(manifest), frozenset(columns), frozenset(splits),
                       _slide_frame(frame, paths), from_manifest=True)


def _slide_frame(table: pd.DataFrame, paths: object) -> pd.DataFrame:
    rows = table["manifest_row"] if "manifest_row" in table.columns else pd.RangeIndex(len(table)) + 2
    return pd.DataFrame({SLIDE_ID: table[SLIDE_ID].astype(str).to_numpy(),
                         "manifest_row": list(rows), PATH: paths})


# ---- the checks ---------------------------------------------------------------------------------
def check_needs(
    run: RunDir, cfg: PathosaeConfig, names: Iterable[str], on_error: OnError = "stop"
) -> None:
    """Check every requested stage's needs before any work; raise the first kind that fails."""
    names = [n for n in names if n in STAGE_NEEDS]
    needs = {n: STAGE_NEEDS[n] for n in names}
    if any(need.cohort for need in needs.values()):
        facts = cohort_facts(run, cfg, "cohort" in names)
        if facts is not None:
            check_columns(facts, cfg, needs)
            check_splits(facts, cfg, needs)
            if any(need.pixels for need in needs.values()):
                check_slides(run, cfg, facts, on_error)
    if "embed" not in names:
        check_features(run, cfg, needs)


def check_columns(facts: CohortFacts, cfg: PathosaeConfig, needs: dict[str, StageNeeds]) -> None:
    """Every column a requested stage reads is in the cohort (one error per missing column)."""
    users: dict[str, tuple[list[str], list[str]]] = {}
    for stage, need in needs.items():
        for wanted in need.columns(cfg):
            stages, keys = users.setdefault(wanted.column, ([], []))
            stages.append(stage)
            keys.append(wanted.key)
    errors = [
        RowError(
            1, column,
            f"the config names this column ({' / '.join(dict.fromkeys(keys))}) and the "
            f"{', '.join(dict.fromkeys(stages))} stage(s) read it, but the manifest has none",
            f"add a '{column}' column to the manifest and rerun `pathosae cohort`, or change "
            f"{' / '.join(dict.fromkeys(keys))} in the config",
        )
        for column, (stages, keys) in users.items() if column not in facts.columns
    ]
    if errors:
        raise ManifestError(facts.manifest, errors)


def check_splits(facts: CohortFacts, cfg: PathosaeConfig, needs: dict[str, StageNeeds]) -> None:
    """Every split a requested stage reads has slides (a missing normal split is derived)."""
    for stage, need in needs.items():
        wanted = need.splits(cfg)
        if wanted is None:
            continue
        missing = [s for s in wanted.required if s not in facts.splits]
        if wanted.any_of and not set(wanted.any_of) & facts.splits:
            missing.append(" or ".join(repr(s) for s in wanted.any_of))
        if missing:
            raise StageError(
                f"the {stage} stage reads split(s) {', '.join(map(str, missing))}, but the cohort "
                f"({facts.source}) has slides only in {sorted(facts.splits) or 'no split'}. Fix: "
                "give the manifest's split column train/val/test values (or leave it empty for "
                "the automatic split) and rerun `pathosae cohort`"
                f"{f', or change {wanted.keys}' if wanted.keys else ''}."
            )


def check_slides(run: RunDir, cfg: PathosaeConfig, facts: CohortFacts, on_error: OnError) -> None:
    """The slide files the tile and embed stages read are there.

    With the cohort stage in the same call it reports missing files row by row; here only a
    manifest without a path column is refused. Otherwise the written cohort's files are checked
    now (they may have moved since): under ``skip`` only a cohort with no slide file at all fails.
    """
    if facts.from_manifest:
        if PATH not in facts.columns:
            raise ManifestError(facts.manifest,
                                [missing_path_column(", ".join(sorted(facts.columns)))])
        return
    absent = facts.slides[[not slide_file_present(p) for p in facts.slides[PATH]]]
    if absent.empty or (on_error == "skip" and len(absent) < len(facts.slides)):
        return
    raise StageError(
        f"{len(absent)} of {len(facts.slides)} slide(s) of {facts.source} have no slide file, "
        f"and the tile and embed stages read pixels: {_list_slides(absent)}. "
        f"Fix: {_slides_fix(run, cfg, absent)}."
    )


def _list_slides(absent: pd.DataFrame) -> str:
    named = [
        f"{sid!r} (manifest row {row}: {f'file not found: {path}' if path else 'no path'})"
        for sid, row, path in absent[[SLIDE_ID, "manifest_row", PATH]].head(LISTED).itertuples(
            index=False)
    ]
    more = len(absent) - LISTED
    return "; ".join(named) + (f"; and {more} more" if more > 0 else "")


def _slides_fix(run: RunDir, cfg: PathosaeConfig, absent: pd.DataFrame) -> str:
    folder = run.features_dir(cfg.embedding.features_name())
    if all((folder / f"{s}.h5").is_file() for s in absent[SLIDE_ID]):
        return (f"their features are already in {folder}: leave tile and embed out "
                f"(`pathosae run --out {run.root} --from sae`), or correct the manifest's paths")
    return FEATURES_ONLY_FIX


def check_features(run: RunDir, cfg: PathosaeConfig, needs: dict[str, StageNeeds]) -> None:
    """The feature folder every requested post-embedding stage reads holds feature files."""
    for stage, need in needs.items():
        if need.features is None:
            continue
        folder = run.features_dir(need.features(cfg))
        if _has_h5(folder):
            continue
        others = sorted(p.name for p in (run.root / "features").glob("*") if _has_h5(p))
        hint = (f" This run has features in {', '.join(others)}: name one with "
                "embedding.encoder (or import with --encoder).") if others else ""
        raise StageError(
            f"the {stage} stage reads features from {folder}, which holds no feature file. Fix: "
            f"run `pathosae embed --run {run.root}` (it reads the slides), or import TRIDENT/"
            f"CLAM features with `pathosae import-features --format trident DIR --run "
            f"{run.root} --encoder {folder.name}`.{hint}"
        )


def _has_h5(folder: Path) -> bool:
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.glob("*.h5"))
