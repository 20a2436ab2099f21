"""One function resolves every command's config: flags over --config over the config recorded in
run.json over the built-in defaults; preflight names the key and the fix for what a later stage
would find missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pathosae.cli import app
from pathosae.config import load_config, resolve_config
from pathosae.errors import ConfigError
from pathosae.pipeline import select_stages
from pathosae.run import RunDir
from pathosae.workflow import preflight, prepare_run

runner = CliRunner()


def _manifest(folder: Path) -> Path:
    """A manifest file: prepare_run only records its path and hash (the cohort stage reads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cohort.csv"
    path.write_text("slide_id,path\n", encoding="utf-8")
    return path


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _spec(path: Path, **extra: object) -> Path:
    return _yaml(path, {"name": path.stem, "ops": [{"op": "ablate", "units": [1]}], **extra})


def test_precedence_flags_over_config_over_recorded_over_built_ins(tmp_path):
    built_in = load_config(None)
    assert resolve_config() == built_in

    recorded = load_config(None, {"seed": 3, "sae": {"k": 5}}).model_dump(mode="json")
    from_run = resolve_config(None, recorded)
    assert (from_run.seed, from_run.sae.k) == (3, 5)

    # --config replaces the recorded config: keys it leaves out take the built-in defaults.
    config = _yaml(tmp_path / "c.yaml", {"embedding": {"batch_size": 7}})
    from_file = resolve_config(config, recorded)
    assert from_file.embedding.batch_size == 7
    assert (from_file.seed, from_file.sae.k) == (built_in.seed, built_in.sae.k)

    # Flags win over both, section by section (the rest of the section is kept).
    flags = {"embedding": {"batch_size": 9}, "sae": {"k": 6}}
    assert resolve_config(config, recorded, flags).embedding.batch_size == 9
    over_run = resolve_config(None, recorded, flags)
    assert (over_run.seed, over_run.sae.k, over_run.embedding.batch_size) == (3, 6, 9)
    assert over_run.sae.expansion == built_in.sae.expansion
    assert resolve_config(None, None, flags).sae.k == 6


def test_a_bad_recorded_config_or_flag_names_the_key():
    with pytest.raises(ConfigError, match=r"run\.json(.|\n)*sae\.kk"):
        resolve_config(None, {"sae": {"kk": 1}})
    with pytest.raises(ConfigError, match=r"executor\.kind"):
        resolve_config(None, None, {"executor": {"kind": "kubernetes"}})


def test_prepare_run_records_flags_and_a_resume_keeps_them(tmp_path):
    manifest = _manifest(tmp_path / "cohort")
    truth = tmp_path / "cohort" / "ground_truth"
    truth.mkdir()
    config = _yaml(tmp_path / "c.yaml", {"sae": {"k": 4}})
    run, cfg = prepare_run(manifest, tmp_path / "run", config, executor="slurm",
                           overrides={"ground_truth": str(truth)})
    assert (cfg.executor.kind, cfg.sae.k, cfg.ground_truth) == ("slurm", 4, truth)
    recorded = run.read_state()["config"]
    assert recorded["executor"]["kind"] == "slurm" and recorded["ground_truth"] == str(truth)

    # Resuming with --out alone: manifest and every key (flags included) come from run.json.
    _, resumed = prepare_run(None, run.root, None)
    assert resumed == cfg
    # A flag on resume overrides the recorded key and is recorded in turn.
    _, local = prepare_run(None, run.root, None, executor="local")
    assert (local.executor.kind, local.sae.k) == ("local", 4)
    assert RunDir(run.root).read_state()["config"]["executor"]["kind"] == "local"


def test_cli_ground_truth_is_resolved_against_the_current_directory(tmp_path, monkeypatch):
    import pathosae.summary
    import pathosae.workflow

    calls: list[list[str]] = []

    def fake_run_stages(_run, _cfg, stages, *_args, **_kwargs):
        calls.append([s.name for s in stages])
        return {}

    monkeypatch.setattr(pathosae.workflow, "run_stages", fake_run_stages)
    monkeypatch.setattr(pathosae.workflow, "check_needs", lambda *_args: None)  # no cohort here
    monkeypatch.setattr(pathosae.summary, "run_summary", lambda _run: [])
    monkeypatch.chdir(tmp_path)
    _manifest(tmp_path / "cohort")
    (tmp_path / "cohort" / "ground_truth").mkdir()
    result = runner.invoke(app, ["run", "--manifest", "cohort/cohort.csv", "--out", "run",
                                 "--ground-truth", "cohort/ground_truth", "--stages", "sae"])
    assert result.exit_code == 0, result.output
    assert calls == [["sae"]]
    recorded = RunDir(tmp_path / "run").read_state()["config"]["ground_truth"]
    assert recorded == str((tmp_path / "cohort" / "ground_truth").resolve())


def test_preflight_names_a_missing_ground_truth_folder(tmp_path):
    cfg = load_config(None, {"ground_truth": str(tmp_path / "nowhere")})
    for stage in ("sae", "confounders"):
        with pytest.raises(ConfigError, match=r"ground_truth: folder .*nowhere does not exist"):
            preflight(cfg, select_stages([stage]))
    preflight(cfg, select_stages(["tile"]))  # stages that do not read it do not care
    (tmp_path / "nowhere").mkdir()
    preflight(cfg, select_stages(["sae", "confounders"]))


def test_cli_run_with_a_missing_ground_truth_fails_before_any_work(tmp_path):
    manifest = _manifest(tmp_path / "cohort")
    result = runner.invoke(app, ["run", "--manifest", str(manifest), "--out", str(tmp_path / "run"),
                                 "--ground-truth", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "ground_truth" in str(result.exception) and "Fix" in str(result.exception)
    assert RunDir(tmp_path / "run").read_state()["stages"] == {}


def test_preflight_checks_edit_spec_files(tmp_path):
    missing = load_config(None, {"edit": {"specs": [str(tmp_path / "gone.yaml")]}})
    with pytest.raises(ConfigError, match=r"edit\.specs: spec file .*gone\.yaml does not exist"):
        preflight(missing, select_stages(["edit"]))
    preflight(missing, select_stages(["sae"]))  # only the stages that read edit.specs check them

    with pytest.raises(ConfigError, match=r"--spec .*nope\.yaml does not exist"):
        preflight(load_config(None), select_stages(["sharpen"]),
                  {"sharpen": {"extra_specs": [tmp_path / "nope.yaml"]}})


def test_adapter_layer_specs_need_the_sharpen_stage(tmp_path):
    adapter = _spec(tmp_path / "adapter.yaml", layer="adapter", model="cycle_3/injected_seed0")
    embedding = _spec(tmp_path / "embedding.yaml")
    cfg = load_config(None, {"edit": {"specs": [str(embedding), str(adapter)]}})
    with pytest.raises(ConfigError, match=r"adapter\.yaml(.|\n)*sharpen stage(.|\n)*Fix"):
        preflight(cfg, select_stages(["edit"]))
    preflight(cfg, select_stages(["edit", "sharpen"]))
    preflight(cfg, select_stages(["sharpen"]))
    preflight(cfg, select_stages(None, until="confounders"))

    # A command-line adapter spec given to the edit stage is pointed at sharpen too.
    with pytest.raises(ConfigError, match=r"pathosae sharpen"):
        preflight(load_config(None), select_stages(["edit"]), {"edit": {"extra_specs": [adapter]}})
    preflight(load_config(None), select_stages(["edit"]), {"edit": {"extra_specs": [embedding]}})
