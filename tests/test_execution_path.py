"""Single-stage commands and `pathosae run` share one execution path (pipeline.run_stages), the
executor included; every writer of run.json holds the run lock."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import pathosae.scaleout
from pathosae.cli import app
from pathosae.errors import PathosaeError
from pathosae.pipeline import STAGES
from pathosae.run import RunDir
from pathosae.workflow import prepare_run

runner = CliRunner()


def _run(tmp_path: Path, **config: Any) -> RunDir:
    """A started run (run.json with a manifest and config); no stage has run."""
    (tmp_path / "cohort").mkdir()
    manifest = tmp_path / "cohort" / "cohort.csv"
    manifest.write_text("slide_id,path\n", encoding="utf-8")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run, _ = prepare_run(manifest, tmp_path / "run", path)
    return run


def _spec(path: Path, **extra: object) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "ops": [{"op": "ablate", "units": [1]}],
                                    **extra}), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_data_checks(monkeypatch):
    """These tests route the stages of an empty run (no cohort, no features): the preflight's
    data checks, which would refuse it, are tested in test_features_only.py."""
    import pathosae.workflow

    monkeypatch.setattr(pathosae.workflow, "check_needs", lambda *_args: None)


@pytest.fixture
def executor_calls(monkeypatch):
    """Records what reaches the Slurm executor instead of submitting jobs."""
    calls: list[dict[str, Any]] = []

    def fake(stage_fn, name, _run, cfg, on_error, *, per_slide, **_options):
        calls.append({"fn": stage_fn, "name": name, "cfg": cfg, "per_slide": per_slide,
                      "on_error": on_error})
        # What the commands print from (the job returns the stage's own summary).
        return {"stage": name, "models": {}, "n_rows": 0, "last_cycle": {}}

    monkeypatch.setattr(pathosae.scaleout, "run_stage_on_executor", fake)
    return calls


def test_single_stage_commands_use_the_configured_executor(tmp_path, executor_calls):
    run = _run(tmp_path, executor={"kind": "slurm"})
    result = runner.invoke(app, ["sae", "--run", str(run.root)])
    assert result.exit_code == 0, result.output
    assert [c["name"] for c in executor_calls] == ["sae"]
    assert run.stage_state("sae")["status"] == "done"
    assert run.stage_state("sae")["summary"]["stage"] == "sae"

    # Per-slide stages go as array jobs; command-line flags reach the job's config.
    result = runner.invoke(app, ["embed", "--run", str(run.root), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    embed = executor_calls[-1]
    assert embed["name"] == "embed" and embed["per_slide"] is True
    assert embed["cfg"].embedding.device == "cpu"
    # The flag applied to that command only: run.json keeps the config `pathosae run` recorded.
    assert run.read_state()["config"]["embedding"]["device"] == "auto"


def test_edit_and_sharpen_route_their_specs_through_the_executor(tmp_path, executor_calls):
    run = _run(tmp_path, executor={"kind": "slurm"})
    adapter = _spec(tmp_path / "adapter.yaml", layer="adapter")
    embedding = _spec(tmp_path / "embedding.yaml")

    result = runner.invoke(app, ["edit", "--run", str(run.root), "--spec", str(adapter),
                                 "--model", "cycle_3/injected_seed0"])
    assert result.exit_code == 0, result.output
    call = executor_calls[-1]
    assert call["name"] == "sharpen"
    assert isinstance(call["fn"], functools.partial)
    assert call["fn"].keywords == {"extra_specs": [adapter], "model": "cycle_3/injected_seed0"}
    assert str(run.root / "saeception" / "adapter_spec_effects.parquet") in result.output.replace(
        "\n", "")
    pickle.dumps(call["fn"])  # what submitit sends to the job

    result = runner.invoke(app, ["edit", "--run", str(run.root), "--spec", str(embedding)])
    assert result.exit_code == 0, result.output
    call = executor_calls[-1]
    assert call["name"] == "edit" and call["fn"].keywords == {"extra_specs": [embedding]}

    result = runner.invoke(app, ["sharpen", "--run", str(run.root), "--spec", str(adapter)])
    assert result.exit_code == 0, result.output
    call = executor_calls[-1]
    assert call["name"] == "sharpen" and call["fn"].keywords == {"extra_specs": [adapter]}


def test_local_single_stage_gets_its_stage_kwargs(tmp_path, monkeypatch):
    import pathosae.edit.stage

    seen: dict[str, Any] = {}

    def fake_stage(_run, _cfg, on_error, **kwargs):
        seen.update(kwargs, on_error=on_error)
        return {"n_rows": 3}

    monkeypatch.setattr(pathosae.edit.stage, "run_stage", fake_stage)
    run = _run(tmp_path)
    spec = _spec(tmp_path / "embedding.yaml")
    result = runner.invoke(app, ["edit", "--run", str(run.root), "--spec", str(spec),
                                 "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert seen == {"extra_specs": [spec], "on_error": "skip"}  # no model kwarg for the edit stage
    assert "(3 rows)" in result.output
    assert run.stage_state("edit")["status"] == "done"


def test_cohort_command_under_a_held_lock_fails_without_writing_run_json(tmp_path):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("slide_id,path\n", encoding="utf-8")
    out = RunDir(tmp_path / "run")
    with out.lock():
        result = runner.invoke(app, ["cohort", "--manifest", str(manifest), "--out", str(out.root)])
    assert result.exit_code != 0
    assert isinstance(result.exception, PathosaeError)
    assert "in use" in str(result.exception)
    assert not out.run_json.exists()


def test_stage_targets():
    targets = {s.name: s.target for s in STAGES}
    assert targets["cohort"] == "pathosae.cohort.stage:run_stage"
    assert targets["report"] == "pathosae.report.stage:run_stage"
