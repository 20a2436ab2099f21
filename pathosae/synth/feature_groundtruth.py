"""The ground truth of a feature-level synthetic cohort on disk, and reading it back.

``OUT/ground_truth/`` holds:

- ``truth.json``: ``kind: "features"``, the seed, the parameters, the number of slides, and which
  rows of ``atoms.npy`` are biology, label (per class) and planted confounder atoms (per variable
  and level), and which rows of ``directions.npy`` are each level's dense shift direction;
- ``atoms.npy``: every atom (rows, unit norm, float32), ``directions.npy``: one unit row per
  confounder level;
- ``slides.csv``: per slide its id, patient, label, levels, split, tile count and whether its site
  is its label's confounded site.

``truth.json`` is written last: a folder with it is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import pathosae
from pathosae.errors import PathosaeError
from pathosae.io import atomic_path, read_json, write_json_atomic
from pathosae.schema import PATIENT_ID, SLIDE_ID, SPLIT
from pathosae.synth.design import preferred_site
from pathosae.synth.feature_design import (
    Dictionary,
    FeatureSlide,
    plan_feature_cohort,
)
from pathosae.synth.feature_params import CONFOUNDERS, FEATURE_LABELS, FeatureSynthParams, level_name

TRUTH_JSON = "truth.json"
ATOMS = "atoms.npy"
DIRECTIONS = "directions.npy"
SLIDES = "slides.csv"
KIND = "features"


def is_feature_truth(gt_dir: str | Path) -> bool:
    """Is ``gt_dir`` the ground truth of ``pathosae synth-features`` (not of ``pathosae synth``)?"""
    path = Path(gt_dir) / TRUTH_JSON
    if not path.is_file():
        return False
    try:
        return read_json(path).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def write_ground_truth(gt_dir: Path, dictionary: Dictionary, plans: list[FeatureSlide], seed: int,
                       params: FeatureSynthParams) -> None:
    """Atoms, directions, slides.csv, then truth.json (last: its presence means complete)."""
    gt_dir.mkdir(parents=True, exist_ok=True)
    (gt_dir / TRUTH_JSON).unlink(missing_ok=True)
    for name, array in ((ATOMS, dictionary.atoms), (DIRECTIONS, dictionary.directions)):
        with atomic_path(gt_dir / name) as tmp, tmp.open("wb") as fh:
            np.save(fh, array)
    with atomic_path(gt_dir / SLIDES) as tmp:
        slides_table(plans, params).to_csv(tmp, index=False)
    write_json_atomic(gt_dir / TRUTH_JSON, truth_record(dictionary, plans, seed, params))


def slides_table(plans: list[FeatureSlide], params: FeatureSynthParams) -> pd.DataFrame:
    return pd.DataFrame({
        "index": [p.index for p in plans],
        SLIDE_ID: [p.slide_id for p in plans],
        PATIENT_ID: [p.patient_id for p in plans],
        "label": [FEATURE_LABELS[p.label] for p in plans],
        **{v: [level_name(v, p.level(v)) for p in plans] for v in CONFOUNDERS},
        SPLIT: [p.split for p in plans],
        "n_tiles": [p.n_tiles for p in plans],
        "site_matches_label": [p.site == preferred_site(p.label, params.n_sites) for p in plans],
    })


def truth_record(dictionary: Dictionary, plans: list[FeatureSlide], seed: int,
                 params: FeatureSynthParams) -> dict[str, Any]:
    levels = {v: [level_name(v, k) for k in range(params.levels(v))] for v in CONFOUNDERS}
    return {
        "kind": KIND,
        "version": 1,
        "pathosae_version": pathosae.__version__,
        "seed": seed,
        "n_slides": len(plans),
        "n_tiles": int(sum(p.n_tiles for p in plans)),
        "params": params.model_dump(mode="json"),
        "labels": list(FEATURE_LABELS),
        "levels": levels,
        "atoms": {
            "biology": list(range(dictionary.n_biology)),
            "label": {name: list(rows) for name, rows in zip(FEATURE_LABELS, dictionary.label_atoms,
                                                             strict=True)},
            **{v: {levels[v][k]: list(rows) for k, rows in enumerate(dictionary.planted[v])}
               for v in CONFOUNDERS},
        },
        "directions": {v: {levels[v][k]: row for k, row in enumerate(dictionary.direction_rows[v])}
                       for v in CONFOUNDERS},
        "shift_norm": {v: params.shift(v) for v in CONFOUNDERS},
        "files": {"atoms": ATOMS, "directions": DIRECTIONS, "slides": SLIDES},
    }


@dataclass(frozen=True)
class FeatureTruth:
    """A feature-level ground-truth folder, read back."""

    gt_dir: Path
    record: dict[str, Any]
    atoms: np.ndarray
    directions: np.ndarray

    @classmethod
    def load(cls, gt_dir: str | Path) -> FeatureTruth:
        gt_dir = Path(gt_dir)
        if not is_feature_truth(gt_dir):
            raise PathosaeError(
                f"{gt_dir / TRUTH_JSON} is missing or not a feature-level ground truth. Fix: pass "
                "the OUT/ground_truth folder written by `pathosae synth-features`."
            )
        record = read_json(gt_dir / TRUTH_JSON)
        arrays = []
        for name in (ATOMS, DIRECTIONS):
            if not (gt_dir / name).is_file():
                raise PathosaeError(f"{gt_dir / name} is missing. Fix: rerun `pathosae "
                                    "synth-features` into the same --out folder.")
            arrays.append(np.load(gt_dir / name, allow_pickle=False))
        return cls(gt_dir, record, arrays[0], arrays[1])

    @property
    def params(self) -> FeatureSynthParams:
        return FeatureSynthParams.model_validate(self.record["params"])

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    def variables(self) -> list[str]:
        """Confounders with planted atoms or a dense shift."""
        return [v for v in CONFOUNDERS if self.atom_rows(v) or self.record["shift_norm"][v] > 0]

    def atom_rows(self, variable: str) -> list[int]:
        """Rows of ``atoms`` planted for any level of ``variable``."""
        return [row for rows in self.record["atoms"][variable].values() for row in rows]

    def atom_levels(self, variable: str) -> dict[int, str]:
        return {row: level for level, rows in self.record["atoms"][variable].items() for row in rows}

    def direction_rows(self, variable: str) -> list[int]:
        """Rows of ``directions`` of ``variable``'s levels (empty when it has no dense shift)."""
        if self.record["shift_norm"][variable] <= 0:
            return []
        return [int(r) for r in self.record["directions"][variable].values()]

    def plans(self) -> dict[str, FeatureSlide]:
        """The cohort's design, planned again from the seed and parameters."""
        plans = plan_feature_cohort(int(self.record["n_slides"]), self.seed, self.params)
        return {p.slide_id: p for p in plans}
