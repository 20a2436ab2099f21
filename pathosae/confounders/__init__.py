"""Which SAE units track the scanner, the site or the stain batch, and how much leaks beyond them.

Plain-array core (no run directory needed): ``association_scan`` + ``add_qvalues`` (scan),
``probe_leakage`` / ``leakage_table`` (leakage), ``robustness_index`` / ``clustering_score``
(pathorob), ``fit_leace`` / ``mean_difference_directions`` (directions). The stage in
``pathosae.confounders.stage`` wires them to a run.
"""

from pathosae.confounders.aggregate import aggregate_by_group, summarise_tiles
from pathosae.confounders.leakage import leakage_table, probe_leakage
from pathosae.confounders.pathorob import clustering_score, pathorob_table, robustness_index
from pathosae.confounders.scan import add_qvalues, association_scan, benjamini_hochberg

__all__ = [
    "add_qvalues",
    "aggregate_by_group",
    "association_scan",
    "benjamini_hochberg",
    "clustering_score",
    "leakage_table",
    "pathorob_table",
    "probe_leakage",
    "robustness_index",
    "summarise_tiles",
]
