"""The report is self-contained, shows what finished and says how to produce what is missing."""

from __future__ import annotations

import re

from pathosae.config import load_config
from pathosae.report import build_report
from pathosae.summary import run_summary
from pathosae.workflow import prepare_run, run_pipeline


def test_report_on_a_tiled_run_embeds_qc_and_names_missing_stages(tmp_path, small_synth_cohort):
    run, cfg = prepare_run(small_synth_cohort, tmp_path / "run", None)
    run_pipeline(run, cfg, ["cohort", "tile"], echo=lambda _: None)
    path = build_report(run)
    page = path.read_text()
    # self-contained: every image inline, nothing fetched from elsewhere
    assert re.findall(r"<img src='data:image/png;base64,", page)
    assert not re.search(r"""src=['"](?!data:)""", page)
    assert "Tissue detection (QC)" in page
    n_slides = len(run.read_state()["stages"]["cohort"]["summary"]) and len(
        list(run.qc_dir.glob("*.png")))
    assert page.count("<figure>") == min(n_slides, 12)
    # stages that did not run say how to produce their outputs
    assert f"pathosae sae --run {run.root}" in page
    assert f"pathosae confounders --run {run.root}" in page
    assert "label × site by split" in page
    lines = run_summary(run)
    assert any(line.startswith("cohort: ") and "tiles" in line for line in lines)


def test_report_stage_registered_last_and_runs_without_a_cluster():
    from pathosae.pipeline import STAGES

    assert STAGES[-1].name == "report" and not STAGES[-1].on_cluster
    assert load_config(None).executor.kind == "local"
