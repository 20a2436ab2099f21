"""The cohort design: patients, slides, labels, sites, scanners, stain batches and splits.

Every patient and slide draws from its own random sub-stream of the seed, so slide k is the same
whatever the number of slides. Designs stay balanced even in a small cohort: patients come in pairs
with one label each, and split and site follow golden-ratio sequences counted within each label
(and split), so any prefix of the patients has close to the planted split fractions and label-site
correlation, and a larger cohort only appends patients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np

from pathosae.synth.params import LABELS, SynthParams

# Stream keys keep the sub-streams of one seed apart.
_STREAM_PATIENT = 1
_STREAM_SLIDE_DESIGN = 2
_STREAM_COHORT = 3
_STREAM_SLIDE_PIXELS = 4
_STREAM_PAIR = 7


def rng_for(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """An independent generator for one patient, slide or cohort-wide draw."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


_GOLDEN = (np.sqrt(5.0) - 1) / 2


def golden(count: int, offset: float) -> float:
    """The ``count``-th point of a shifted golden-ratio sequence: evenly spread for any prefix."""
    return float((offset + count * _GOLDEN) % 1.0)


@dataclass(frozen=True)
class SlidePlan:
    """One slide of the design (no pixels yet)."""

    index: int
    slide_id: str
    patient_id: str
    label: str
    site: int
    scanner: int
    stain_batch: int
    split: str
    site_matches_label: bool

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def site_name(site: int) -> str:
    return f"site_{chr(ord('A') + site)}"


def scanner_name(scanner: int) -> str:
    return f"scanner_{scanner + 1}"


def batch_name(site: int, batch: int) -> str:
    return f"{site_name(site)}_b{batch + 1}"


def preferred_site(label_index: int, n_sites: int) -> int:
    """The site a label is confounded with: label k goes to site k (mod the number of sites)."""
    return label_index % n_sites


def plan_cohort(n_slides: int, seed: int, params: SynthParams) -> list[SlidePlan]:
    """The design of the first ``n_slides`` slides (patients in order, one or two slides each)."""
    offsets = rng_for(seed, _STREAM_COHORT).random(16)
    seen: dict[tuple[int, str], int] = {}  # patients so far per (label, split)
    plans: list[SlidePlan] = []
    patient = 0
    while len(plans) < n_slides:
        pair_flip = int(rng_for(seed, _STREAM_PAIR, patient // 2).integers(2))
        label_index = (patient % 2) ^ pair_flip  # one patient of each label per pair
        split = split_for(golden(patient // 2, offsets[label_index]), params)
        count = seen.get((label_index, split), 0)
        seen[(label_index, split)] = count + 1
        cell = 2 + 2 * ("train", "val", "test").index(split) + label_index
        site = site_for(golden(count, offsets[cell]), label_index, split, params)
        rng = rng_for(seed, _STREAM_PATIENT, patient)
        n_patient_slides = 2 if rng.random() < params.second_slide_fraction else 1
        for _ in range(min(n_patient_slides, n_slides - len(plans))):
            plans.append(_slide_plan(len(plans), patient, split, label_index, site, seed, params))
        patient += 1
    return plans


def _slide_plan(
    index: int, patient: int, split: str, label_index: int, site: int, seed: int,
    params: SynthParams,
) -> SlidePlan:
    design = rng_for(seed, _STREAM_SLIDE_DESIGN, index)
    own_scanner = site % params.n_scanners
    if design.random() < params.scanner_follows_site:
        scanner = own_scanner
    else:
        scanner = int(design.integers(params.n_scanners))
    return SlidePlan(
        index=index,
        slide_id=f"synth_{index:04d}",
        patient_id=f"patient_{patient:04d}",
        label=LABELS[label_index],
        site=site,
        scanner=scanner,
        stain_batch=int(design.integers(params.batches_per_site)),
        split=split,
        site_matches_label=site == preferred_site(label_index, params.n_sites),
    )


def slide_render_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws a slide's pixels."""
    return rng_for(seed, _STREAM_SLIDE_PIXELS, index)


class CohortDesign(Protocol):
    """The settings the patient-level design reads (image-level and feature-level cohorts)."""

    @property
    def test_fraction(self) -> float: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def n_sites(self) -> int: ...
    @property
    def confounding(self) -> float: ...
    @property
    def test_shift(self) -> Literal["balanced", "reversed"]: ...


def split_for(u: float, params: CohortDesign) -> str:
    if u < params.test_fraction:
        return "test"
    if u < params.test_fraction + params.val_fraction:
        return "val"
    return "train"


def site_for(u: float, label_index: int, split: str, params: CohortDesign) -> int:
    """Site from a uniform draw: a mixture of the label's site (weight c) and a uniform site."""
    n = params.n_sites
    if split == "test" and params.test_shift == "balanced":
        return min(int(u * n), n - 1)
    target = label_index if split != "test" else 1 - label_index  # reversed test: the other's site
    c = params.confounding
    if u < c:
        return preferred_site(target, n)
    return min(int((u - c) / (1 - c) * n), n - 1)
