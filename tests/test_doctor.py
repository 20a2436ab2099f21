"""`pathosae doctor` names what is wrong and how to fix it."""

from __future__ import annotations

from typer.testing import CliRunner

from pathosae.cli import app

runner = CliRunner()


def test_doctor_passes_on_the_default_config():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "OpenSlide: library" in result.output
    assert "efficientnet_lite0: packaged ImageNet weights" in result.output


def test_doctor_fails_on_a_missing_weights_file(tmp_path):
    config = tmp_path / "uni.yaml"
    missing = tmp_path / "uni.safetensors"
    config.write_text(f"embedding:\n  encoder: uni\n  weights: {missing}\n")
    result = runner.invoke(app, ["doctor", "--config", str(config)])
    assert result.exit_code == 1
    assert f"{missing} does not exist" in result.output
    assert "fix: " in result.output
