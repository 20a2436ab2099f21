"""Reading the cohort table that the cohort stage wrote (RUN/cohort.parquet)."""

from __future__ import annotations

import pandas as pd

from pathosae.run import RunDir


def load_cohort(run: RunDir) -> pd.DataFrame:
    """The validated cohort table of a run (written by the cohort stage)."""
    return pd.read_parquet(run.require(run.cohort_path, "cohort"))
