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
