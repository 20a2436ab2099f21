"""Which stages a run has finished, judged by their output files, and how to produce the rest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pathosae.schema import COHORT_TABLE


@dataclass(frozen=True)
class StageOutput:
    """The file (relative to the run) that shows a stage ran, and the command producing it."""

    stage: str
    relative: str
    command: str
    what: str


STAGE_OUTPUTS: tuple[StageOutput, ...] = (
    StageOutput("cohort", COHORT_TABLE, "pathosae run --manifest MANIFEST.csv --out {run} "
                "--stages cohort", "the validated cohort table"),
    StageOutput("tile", "tiles", "pathosae run --out {run} --stages tile", "tile coordinates"),
    StageOutput("embed", "features", "pathosae run --out {run} --stages embed", "tile features"),
    StageOutput("sae", "sae", "pathosae run --out {run} --stages sae", "a trained SAE"),
    StageOutput("confounders", "confounders/associations.parquet",
                "pathosae run --out {run} --stages confounders",
                "unit × metadata associations, leakage and directions"),
    StageOutput("edit", "edits/effects.parquet", "pathosae edit --run {run}",
                "the effect table of confounder edits"),
    StageOutput("saeception", "saeception/metrics.parquet", "pathosae sharpen --run {run}",
                "SAE-ception metrics across cycles"),
)
BY_STAGE = {s.stage: s for s in STAGE_OUTPUTS}


@dataclass(frozen=True)
class StageStatus:
    stage: str
    done: bool
    path: Path
    command: str
    what: str

    def message(self) -> str:
        """What is missing and the command that produces it (shown instead of a traceback)."""
        return (f"The '{self.stage}' stage has not run on this run: {self.path} ({self.what}) is "
                f"missing. Produce it with: {self.command}")


def _present(path: Path) -> bool:
    if path.is_dir():
        return any(p for p in path.iterdir() if not p.name.startswith("."))
    return path.is_file()


def stage_status(root: Path, stage: str) -> StageStatus:
    spec = BY_STAGE[stage]
    path = root / spec.relative
    return StageStatus(stage, _present(path), path, spec.command.format(run=root), spec.what)


def all_statuses(root: Path) -> list[StageStatus]:
    return [stage_status(root, s.stage) for s in STAGE_OUTPUTS]
