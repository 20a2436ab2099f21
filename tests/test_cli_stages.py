"""Single-stage commands use the run's recorded config and record themselves in run.json."""

from __future__ import annotations

import json

from run_helpers import make_cohort, write_config
from typer.testing import CliRunner

from pathosae.cli import app
from pathosae.run import RunDir

runner = CliRunner()


def test_sae_command_uses_the_runs_config_and_records_the_stage(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", n_slides=4)
    config = write_config(tmp_path / "fast.yaml", sae={"k": 4})
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--manifest", str(manifest), "--out", str(out),
                                 "--config", str(config), "--until", "embed"])
    assert result.exit_code == 0, result.output

    # no --config: the run's own config (k=4, small SAE) is used, not the built-in defaults
    result = runner.invoke(app, ["sae", "--run", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "sae" / "topk" / "cfg.json").read_text())
    assert saved["hparams"]["k"] == 4 and saved["hparams"]["d_sae"] == 2 * saved["hparams"]["d_in"]
    entry = RunDir(out).stage_state("sae")
    assert entry["status"] == "done" and entry["duration_s"] >= 0
    assert entry["summary"]["models"]["topk"]["status"] == "trained"

    # a stage whose inputs are missing fails clearly and is recorded as failed
    result = runner.invoke(app, ["edit", "--run", str(out)])
    assert result.exit_code != 0
    assert RunDir(out).stage_state("edit")["status"] == "failed"
