"""The cohort stage: validate the manifest recorded in run.json and write RUN/cohort.parquet."""

from __future__ import annotations

from pathosae.cohort.manifest import build_cohort
from pathosae.config import PathosaeConfig
from pathosae.errors import StageError
from pathosae.run import RunDir
from pathosae.types import OnError


def run_stage(
    run: RunDir, cfg: PathosaeConfig, on_error: OnError, need_slides: bool = False
) -> dict[str, object]:
    """Pipeline entry: the manifest is the one recorded in run.json when the run was created.

    ``need_slides`` is set when the tile or embed stage runs in the same call: then every slide
    file must be there; otherwise slides without a file are recorded as features-only.
    """
    manifest = run.read_state().get("manifest")
    if not manifest:
        raise StageError(
            f"{run.run_json} names no manifest. Fix: start the run with "
            "`pathosae run --manifest cohort.csv --out RUN`."
        )
    return build_cohort(run, manifest, cfg, on_error, need_slides=need_slides)
