"""Design of the feature-level cohort: patients, slides and splits, and the dictionary of atoms.

Like the image-level design (:mod:`pathosae.synth.design`), every patient and slide draws from its
own sub-stream of the seed, so slide k is the same whatever the number of slides, and patients
come in pairs with one label each while split and site follow golden-ratio sequences counted
within each label (and split): any prefix of the patients has close to the planted split
fractions and label-site correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathosae.synth.design import golden, rng_for, site_for, split_for
from pathosae.synth.feature_params import CONFOUNDERS, FeatureSynthParams

# Stream keys keep the sub-streams of one seed apart (distinct from the image-level ones).
STREAM_PATIENT = 21
STREAM_SLIDE = 22
STREAM_COHORT = 23
STREAM_PAIR = 24
STREAM_DICTIONARY = 25
STREAM_RATES = 26
STREAM_CODES = 27
STREAM_NOISE = 28

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FeatureSlide:
    """One slide of the design: its levels (as indices) and its number of tiles."""

    index: int
    slide_id: str
    patient_id: str
    label: int
    site: int
    scanner: int
    stain_batch: int
    split: str
    n_tiles: int

    def level(self, variable: str) -> int:
        return {"site": self.site, "scanner": self.scanner, "stain_batch": self.stain_batch}[variable]


def slide_id_for(index: int) -> str:
    return f"synth_{index:06d}"


def plan_feature_cohort(n_slides: int, seed: int, params: FeatureSynthParams) -> list[FeatureSlide]:
    """The first ``n_slides`` slides (patients in order, one or two slides each)."""
    offsets = rng_for(seed, STREAM_COHORT).random(16)
    seen: dict[tuple[int, str], int] = {}  # patients so far per (label, split)
    plans: list[FeatureSlide] = []
    patient = 0
    while len(plans) < n_slides:
        pair_flip = int(rng_for(seed, STREAM_PAIR, patient // 2).integers(2))
        label = (patient % 2) ^ pair_flip  # one patient of each label per pair
        split = split_for(golden(patient // 2, offsets[label]), params)
        count = seen.get((label, split), 0)
        seen[(label, split)] = count + 1
        cell = 2 + 2 * SPLITS.index(split) + label
        site = site_for(golden(count, offsets[cell]), label, split, params)
        two = rng_for(seed, STREAM_PATIENT, patient).random() < params.second_slide_fraction
        for _ in range(min(2 if two else 1, n_slides - len(plans))):
            plans.append(_slide(len(plans), patient, label, site, split, seed, params))
        patient += 1
    return plans


def _slide(
    index: int, patient: int, label: int, site: int, split: str, seed: int,
    params: FeatureSynthParams,
) -> FeatureSlide:
    rng = rng_for(seed, STREAM_SLIDE, index)
    follows = rng.random() < params.scanner_follows_site
    scanner = site % params.n_scanners if follows else int(rng.integers(params.n_scanners))
    stain_batch = int(rng.integers(params.n_stain_batches))
    jitter = params.tile_jitter * (2 * rng.random() - 1)
    return FeatureSlide(
        index=index, slide_id=slide_id_for(index), patient_id=f"patient_{patient:06d}",
        label=label, site=site, scanner=scanner, stain_batch=stain_batch, split=split,
        n_tiles=max(1, round(params.tiles * (1 + jitter))),
    )


# ---- the dictionary ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Dictionary:
    """Every atom (rows, unit norm), the dense directions, and which rows belong to what.

    Atom rows: biology atoms first (the first ``n_label_atoms`` of them are label atoms, the first
    half enriched in class 0, the second half in class 1), then each confounder's planted atoms,
    level by level. ``directions`` has one unit row per confounder level, in the same order.
    """

    atoms: np.ndarray  # n_atoms x dim, float32
    directions: np.ndarray  # n_levels x dim, float32
    base_rates: np.ndarray  # n_biology, sums to 1
    label_atoms: tuple[tuple[int, ...], tuple[int, ...]]  # enriched in class 0, in class 1
    planted: dict[str, tuple[tuple[int, ...], ...]]  # variable -> per level, atom rows
    direction_rows: dict[str, tuple[int, ...]]  # variable -> per level, row of ``directions``

    @property
    def n_biology(self) -> int:
        return len(self.base_rates)


def build_dictionary(seed: int, params: FeatureSynthParams) -> Dictionary:
    """The cohort's atoms and directions (one draw per seed, shared by every slide)."""
    rng = rng_for(seed, STREAM_DICTIONARY)
    n_bio, half = params.n_biology_atoms, params.n_label_atoms // 2
    planted: dict[str, tuple[tuple[int, ...], ...]] = {}
    direction_rows: dict[str, tuple[int, ...]] = {}
    row, direction = n_bio, 0
    for variable in CONFOUNDERS:
        per, levels = params.atoms_per_level(variable), params.levels(variable)
        planted[variable] = tuple(tuple(range(row + k * per, row + (k + 1) * per))
                                  for k in range(levels))
        direction_rows[variable] = tuple(range(direction, direction + levels))
        row, direction = row + per * levels, direction + levels
    rates = np.exp(params.rate_spread * rng.standard_normal(n_bio))
    return Dictionary(
        atoms=_unit_rows(rng, row, params.dim),
        directions=_unit_rows(rng, direction, params.dim),
        base_rates=rates / rates.sum(),
        label_atoms=(tuple(range(half)), tuple(range(half, 2 * half))),
        planted=planted,
        direction_rows=direction_rows,
    )


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim))
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return rows.astype(np.float32)
