"""Synthetic H&E cohort with known ground truth: real pyramidal TIFF slides, a label that follows
the biology, and site, stain-batch and scanner confounders that do not."""

from typing import TYPE_CHECKING

from pathosae._lazy import lazy_exports

if TYPE_CHECKING:  # the names for the type checker; at run time each loads on first use
    from pathosae.synth.cohort import MANIFEST_COLUMNS, generate_cohort
    from pathosae.synth.design import SlidePlan, plan_cohort
    from pathosae.synth.groundtruth import load_phenotype_map, tile_phenotype_composition
    from pathosae.synth.layout import CLASS_NAMES
    from pathosae.synth.params import LABELS, PHENOTYPES, SynthParams

_EXPORTS = {
    "MANIFEST_COLUMNS": "pathosae.synth.cohort",
    "generate_cohort": "pathosae.synth.cohort",
    "SlidePlan": "pathosae.synth.design",
    "plan_cohort": "pathosae.synth.design",
    "load_phenotype_map": "pathosae.synth.groundtruth",
    "tile_phenotype_composition": "pathosae.synth.groundtruth",
    "CLASS_NAMES": "pathosae.synth.layout",
    "LABELS": "pathosae.synth.params",
    "PHENOTYPES": "pathosae.synth.params",
    "SynthParams": "pathosae.synth.params",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)

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
