"""Names that several modules share: table columns and the run directory's file names.

A column or file written by one stage and read by another is named here once, so that a rename
is one edit and a typo is an import error instead of a silent empty lookup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

# ---- columns of the cohort table and of every stage's tables ---------------------------------
SLIDE_ID: Final = "slide_id"
PATIENT_ID: Final = "patient_id"
PATH: Final = "path"
SLIDE_AVAILABLE: Final = "slide_available"  # False: no slide file (a features-only cohort)
SPLIT: Final = "split"
MPP: Final = "mpp"
TILE: Final = "tile"
SETTINGS_HASH: Final = "settings_hash"  # the settings and inputs an output was computed from
HELD_OUT_SITE: Final = "held_out_site"  # the site a leave-one-site-out split tests on
UNIT: Final = "unit"
VARIABLE: Final = "variable"
NORMAL_TEST: Final = "normal_test"  # where the normal (in-distribution) test comes from

# ---- run directory: one folder per stage after embedding --------------------------------------
RUN_JSON: Final = "run.json"
COHORT_TABLE: Final = "cohort.parquet"
COHORT_ERRORS: Final = "cohort_errors.csv"
SUMMARY: Final = "summary.json"  # every analysis stage's summary, beside its tables
CONFOUNDERS_DIR: Final = "confounders"
EDITS_DIR: Final = "edits"
SAECEPTION_DIR: Final = "saeception"
REPORT_HTML: Final = "report.html"

# RUN/sae/<name>/
SAE_WEIGHTS: Final = "sae.safetensors"
SAE_CONFIG: Final = "cfg.json"
RANDOM_ENCODER_SAE: Final = Path("controls") / "random_encoder"  # the random-encoder control's SAE
UNIT_STABILITY: Final = "stability.parquet"  # per unit: matched decoder cosine across SAE seeds

# RUN/confounders/
ASSOCIATIONS: Final = "associations.parquet"
LEAKAGE: Final = "leakage.parquet"
PATHOROB: Final = "pathorob.parquet"
ROBUSTNESS: Final = "robustness.parquet"  # croma RI, MaRI, CRoMa
CONTROLS: Final = "controls.parquet"
DIRECTIONS: Final = "directions.safetensors"
DIRECTIONS_JSON: Final = "directions.json"
GROUND_TRUTH_TABLE: Final = "groundtruth.parquet"

# RUN/edits/
EFFECTS: Final = "effects.parquet"

# RUN/saeception/
SAECEPTION_METRICS: Final = "metrics.parquet"
SELECTION: Final = "selection.parquet"
ADAPTER_EDITS: Final = "adapter_edits.parquet"  # default adapter-layer edits of every variant
ADAPTER_SPEC_EFFECTS: Final = "adapter_spec_effects.parquet"  # the user's adapter-layer specs
CYCLE_MODEL: Final = "model.safetensors"
