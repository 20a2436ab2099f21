"""The report stage: RUN/report.html from the files the earlier stages wrote."""

from __future__ import annotations

from pathosae.config import PathosaeConfig
from pathosae.report.build import build_report
from pathosae.run import RunDir
from pathosae.types import OnError


def run_stage(run: RunDir, cfg: PathosaeConfig, on_error: OnError) -> dict[str, object]:
    """Pipeline entry; the report reads the run directory only."""
    del cfg, on_error  # every input is a file of the run
    path = build_report(run)
    return {"report": str(path), "size_kb": round(path.stat().st_size / 1024)}
