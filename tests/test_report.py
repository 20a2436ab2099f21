"""The report is self-contained, shows what finished and says how to produce what is missing.

Every expectation comes from what the test itself decided (the manifest, the config, the stages
it ran), never from the files the pipeline wrote.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pathosae.config import load_config
from pathosae.pipeline import STAGE_NAMES, STAGES
from pathosae.report import build_report
from pathosae.report.build import RUN_HEADING, VERDICT_HEADING
from pathosae.run import RunDir
from pathosae.summary import run_summary
from pathosae.tiling.reader import load_tiles
from pathosae.workflow import prepare_run, run_pipeline

RAN = ["cohort", "tile", "report"]
# The stages this test does not run, each with the command the report must name for it.
NOT_RUN = {"sae": "pathosae sae --run {root}", "confounders": "pathosae confounders --run {root}",
           "edit": "pathosae edit --run {root}", "sharpen": "pathosae sharpen --run {root}"}


def _after(page: str, heading: str) -> str:
    """The HTML between ``heading`` and the next heading."""
    start = page.index(heading) + len(heading)
    end = re.search(r"<h[123]>", page[start:])
    return page[start:start + end.start()] if end else page[start:]


def _cells(table_html: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows of the first HTML table in ``table_html``."""
    header = re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table_html.split("</thead>")[0], re.S)
    body = table_html.split("<tbody>")[1].split("</tbody>")[0]
    rows = [re.findall(r"<t[hd](?:\s[^>]*)?>(.*?)</t[hd]>", row, re.S)
            for row in re.findall(r"<tr(?:\s[^>]*)?>(.*?)</tr>", body, re.S)]
    return [h.strip() for h in header], [[c.strip() for c in row] for row in rows]


def test_report_on_a_tiled_run_embeds_qc_and_names_missing_stages(tmp_path, small_synth_cohort):
    manifest = pd.read_csv(small_synth_cohort)
    declared = ["scanner"]  # not the default (site, scanner): the report must follow the config
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"cohort": {"confounders": declared}}), encoding="utf-8")
    run, cfg = prepare_run(small_synth_cohort, tmp_path / "run", config)
    assert cfg.cohort.confounders == declared
    run_pipeline(run, cfg, RAN, echo=lambda _: None)
    page = (run.root / "report.html").read_text(encoding="utf-8")

    # self-contained: every image inline, nothing fetched from elsewhere
    assert not re.search(r"""(?:src|href)=['"](?!data:)""", page)
    # one QC thumbnail per manifest slide, captioned with its id, and no other image
    n_slides = len(manifest)
    assert n_slides <= 12  # below the grid's limit: every slide is shown
    assert page.count("<img src='data:image/png;base64,") == n_slides
    captions = re.findall(r"<figure><img [^>]*><figcaption>(.*?)</figcaption></figure>", page)
    assert sorted(captions) == sorted(manifest["slide_id"])
    assert "Tissue detection (QC)" in page

    # the cohort line counts the manifest's slides and patients
    patients = manifest["patient_id"].nunique()
    assert f"<p>{n_slides} slides from {patients} patients.</p>" in page
    # one label × confounder table per declared confounder, with the manifest's counts
    assert re.findall(r"<h3>label × (\w+) by split</h3>", page) == declared
    header, rows = _cells(_after(page, "<h3>label × scanner by split</h3>"))
    levels = sorted(manifest["scanner"].unique())
    assert header == ["split", "label", *levels]
    expected = pd.crosstab([manifest["split"], manifest["label"]], manifest["scanner"])
    got = {(r[0], r[1]): [int(v) for v in r[2:]] for r in rows}
    assert got == {key: [int(expected.loc[key, lv]) for lv in levels] for key in expected.index}

    # the stage table lists exactly the stages that ran, in pipeline order, every one done: the
    # report stage, which run.json calls "running" while it writes this page, is shown done
    header, rows = _cells(_after(page, RUN_HEADING))
    assert header[0] == "stage" and [r[0] for r in rows] == [s for s in STAGE_NAMES if s in RAN]
    assert run.read_state()["stages"]["report"]["status"] == "done"  # set after the page
    assert [r[1] for r in rows] == ["done", "done", "done (this report)"]
    assert all(float(r[2]) >= 0 for r in rows)
    # the page opens with the verdict on each declared confounder, not yet measured here
    assert re.findall(r"<h2[^>]*>.*?</h2>", page)[0] == VERDICT_HEADING
    verdict_section = page.split(VERDICT_HEADING)[1].split("<h2")[0]
    assert re.findall(r"<h3>(\w+)</h3>", verdict_section) == declared
    assert "not known: the confounders stage has not run" in verdict_section
    # every stage that did not run says how to produce its outputs, and only those
    assert re.findall(r"<p class='missing'>The (\w+) stage", page) == list(NOT_RUN)
    for command in NOT_RUN.values():
        assert command.format(root=run.root) in page

    # the one-screen summary counts the manifest's slides and patients and the tile files' tiles
    n_tiles = sum(len(load_tiles(run, sid)[0]) for sid in manifest["slide_id"])
    assert n_tiles > 0
    lines = run_summary(run)
    assert f"cohort: {n_slides} slides, {patients} patients, {n_tiles} tiles" in lines
    assert f"report: {run.root / 'report.html'}" in lines


def test_qc_grid_shows_the_first_twelve_slides_in_cohort_order(tmp_path: Path) -> None:
    ids = [f"slide_{i:02d}" for i in reversed(range(14))]  # cohort order, not name order
    run = RunDir(tmp_path / "run")
    run.init(load_config(None).model_dump(mode="json"), None, None)
    pd.DataFrame({
        "slide_id": ids, "patient_id": [f"p{i // 2}" for i in range(14)],
        "label": ["a", "b"] * 7, "site": ["x"] * 7 + ["y"] * 7, "scanner": "s1",
        "split": ["train"] * 10 + ["test"] * 4,
    }).to_parquet(run.cohort_path, index=False)
    run.qc_dir.mkdir(parents=True)
    for sid in ids:
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(run.qc_dir / f"{sid}.png")
    page = build_report(run).read_text(encoding="utf-8")
    captions = re.findall(r"<figure><img [^>]*><figcaption>(.*?)</figcaption></figure>", page)
    assert captions == ids[:12]
    assert "<p>14 slides from 7 patients.</p>" in page
    assert re.findall(r"<h3>label × (\w+) by split</h3>", page) == ["site", "scanner"]
    # no stage has run: the header has no stage table and every later stage is missing
    assert re.findall(r"<p class='missing'>The (\w+) stage", page) == list(NOT_RUN)


def test_report_stage_is_last_and_runs_in_the_calling_process() -> None:
    # The report reads every other stage's outputs, so it must come after all of them, and it is
    # bookkeeping: never sent to a cluster.
    assert STAGE_NAMES[-1] == "report" and set(STAGE_NAMES[:-1]) >= {"cohort", "tile", *NOT_RUN}
    assert not STAGES[-1].on_cluster
