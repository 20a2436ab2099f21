"""The cohort's confounder effects: one stain per site and batch, one imaging response per scanner.

They depend on the seed and the parameters only (never on the number of slides), so adding
slides never changes how an existing site stains or scanner images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathosae.synth.design import rng_for
from pathosae.synth.params import SynthParams
from pathosae.synth.stain import ScannerEffect, StainEffect, batch_stain, scanner_effect, site_stain

_STREAM_EFFECTS = 5
_STREAM_BATCH = 6


@dataclass(frozen=True)
class CohortEffects:
    site: dict[int, StainEffect]
    batch: dict[tuple[int, int], StainEffect]
    scanner: dict[int, ScannerEffect]


def cohort_effects(seed: int, params: SynthParams) -> CohortEffects:
    rng = rng_for(seed, _STREAM_EFFECTS)
    site_phase, scanner_phase = rng.uniform(0, 2 * np.pi, 2)
    scanner_order = rng.permutation(params.n_scanners)
    sites = {s: site_stain(s, params, site_phase) for s in range(params.n_sites)}
    batches = {
        (s, b): batch_stain(sites[s], rng_for(seed, _STREAM_BATCH, s * 1000 + b), params)
        for s in range(params.n_sites)
        for b in range(params.batches_per_site)
    }
    scanners = {
        j: scanner_effect(j, params, scanner_phase, scanner_order) for j in range(params.n_scanners)
    }
    return CohortEffects(site=sites, batch=batches, scanner=scanners)
