"""Every shipped config validates; `pathosae config` round-trips; errors name the key and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pathosae.cli import app
from pathosae.config import PathosaeConfig, config_yaml, load_config
from pathosae.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
COHORT_CONFIGS = [p for p in CONFIGS if p.name != "default.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, PathosaeConfig)


def test_default_config_spells_out_every_section():
    default = yaml.safe_load((CONFIGS[0].parent / "default.yaml").read_text())
    assert set(default) == set(PathosaeConfig.model_fields)


def test_config_yaml_round_trips_with_comments():
    cfg = load_config(overrides={"tiling": {"tile_px": 256}, "sae": {"k": 16}})
    text = config_yaml(cfg)
    assert "# Tile edge in pixels at target_mpp." in text
    assert PathosaeConfig.model_validate(yaml.safe_load(text)) == cfg


def test_cli_config_prints_the_resolved_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("embedding:\n  batch_size: 7\n")
    result = CliRunner().invoke(app, ["config", "--config", str(config)])
    assert result.exit_code == 0
    assert yaml.safe_load(result.output)["embedding"]["batch_size"] == 7


def test_nested_unknown_keys_and_bad_values_are_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("sae:\n  controls:\n    permute: true\n")
    with pytest.raises(ConfigError, match=r"sae\.controls\.permute: unknown key"):
        load_config(config)
    config.write_text("executor:\n  kind: kubernetes\n")
    with pytest.raises(ConfigError, match=r"executor\.kind"):
        load_config(config)
    config.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(config)


def test_built_in_defaults_are_exactly_configs_default_yaml():
    assert load_config(None).model_dump() == load_config(CONFIGS[0].parent / "default.yaml").model_dump()


def test_cli_config_without_a_file_prints_the_built_in_defaults():
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0
    assert PathosaeConfig.model_validate(yaml.safe_load(result.output)) == load_config(None)


@pytest.mark.parametrize("path", COHORT_CONFIGS, ids=[p.name for p in COHORT_CONFIGS])
def test_cohort_configs_set_cohort_scale_sae_training(path):
    """The built-ins are the CPU demo's; every config for a real cohort scales the SAE up."""
    sae, demo = load_config(path).sae, load_config(None).sae
    assert sae.expansion >= 8 and sae.batch_size >= 1024
    assert sae.n_samples >= 300_000 and sae.dead_window >= 100_000
    assert (sae.n_samples, sae.dead_window) != (demo.n_samples, demo.dead_window)


def test_ground_truth_is_a_top_level_key(tmp_path):
    assert load_config(None).ground_truth is None
    config = tmp_path / "c.yaml"
    config.write_text(f"ground_truth: {tmp_path}\n")
    assert load_config(config).ground_truth == tmp_path
