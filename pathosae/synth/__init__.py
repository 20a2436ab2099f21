"""Synthetic H&E cohort with known ground truth: real pyramidal TIFF slides, a label that follows
the biology, and site, stain-batch and scanner confounders that do not."""

from pathosae.synth.cohort import MANIFEST_COLUMNS, generate_cohort
from pathosae.synth.design import SlidePlan, plan_cohort
from pathosae.synth.groundtruth import load_phenotype_map, tile_phenotype_composition
from pathosae.synth.layout import CLASS_NAMES
from pathosae.synth.params import LABELS, PHENOTYPES, SynthParams

__all__ = [
    "CLASS_NAMES",
    "LABELS",
    "MANIFEST_COLUMNS",
    "PHENOTYPES",
    "SlidePlan",
    "SynthParams",
    "generate_cohort",
    "load_phenotype_map",
    "plan_cohort",
    "tile_phenotype_composition",
]
