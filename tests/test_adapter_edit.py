"""Edits on the adapter layer of SAE-ception models through the cycle's SAE."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from planted_bags import planted_bags

from pathosae.downstream import predict_proba, predict_proba_hidden
from pathosae.downstream.splits import Splits
from pathosae.downstream.train import tile_hidden
from pathosae.edit import Editor, EditSpec, apply_code_edit
from pathosae.edit.spec import Ablate
from pathosae.edit.user_specs import adapter_specs, command_line_embedding_specs, embedding_specs, read_specs
from pathosae.errors import ConfigError
from pathosae.saeception.adapter_edits import (
    default_adapter_effects,
    hidden_splits,
    load_cycle_model,
)
from pathosae.saeception.config import SAECeptionConfig
from pathosae.saeception.cycle import base_model
from pathosae.saeception.variants import adapter_edit_table, adapter_headline, run_all

CFG = SAECeptionConfig(
    cycles=1, seeds=[0], variants=["plain", "injected"], n_top=4, cycle_epochs=3,
    sae_samples=2048, sae_expansion=2, sae_k=4, eval_max_tiles=200, leakage_folds=3,
    min_cell_tiles=4, aux_weight_grid=[], n_top_grid=[], adapter_edit_random_draws=2,
    flag_rule="q", downstream={"epochs": 5, "hidden_dim": 8, "attention_dim": 4},
)
EFFECT_COLUMNS = {
    "edit", "kind", "mode", "n_units", "draw", "missing_reason", "layer", "site_leakage",
    "site_leakage_estimator", "site_leakage_nan_reason", "flip_rate", "collateral_bacc_drop",
    *(f"{m}_{s}" for m in ("auroc", "bacc", "worst_site_bacc", "per_site_bacc")
      for s in ("normal", "shifted")),
}


@pytest.fixture(scope="module")
def planted() -> Splits:
    return Splits(planted_bags(60, 1, "train", 0.9), planted_bags(30, 2, "val", 0.9),
                  planted_bags(30, 3, "test", 0.1))


@pytest.fixture(scope="module")
def trained(planted: Splits):
    model, sae, _ = base_model(planted, CFG, 0)
    return model, sae


def test_ablating_a_unit_moves_h_by_its_decoder_row_times_its_code(trained, planted) -> None:
    model, sae = trained
    h = tile_hidden(model, planted.train.x)
    z = sae.encode(h)
    unit = int((z > 0).sum(0).argmax())  # a unit that fires
    spec = EditSpec(name="a", layer="adapter", ops=[Ablate(units=[unit])])
    edited = Editor(spec, sae).fit_transform(h)
    expected = -z[:, unit : unit + 1] * sae.W_dec[unit].detach()[None, :]
    assert torch.allclose(edited - h, expected, atol=1e-5)
    assert not torch.allclose(edited, h)
    # The SAE's error is kept: what it does not explain is the same before and after.
    z2 = z.clone()
    z2[:, unit] = 0
    assert torch.allclose(h - sae.decode(z), edited - sae.decode(z2), atol=1e-5)


def test_an_empty_edit_is_the_identity(trained, planted) -> None:
    model, sae = trained
    hidden = hidden_splits(model, planted)
    h = hidden.train.x
    assert torch.allclose(apply_code_edit(h, sae, []), h, atol=1e-5)
    # Ablating a unit that never fires changes nothing. Silence the unit that fires most often
    # (no encoder weights, a bias far below any pre-activation): it is then zero on every tile.
    unit = int((sae.encode(h) > 0).sum(0).argmax())
    spec = EditSpec(name="s", layer="adapter", ops=[Ablate(units=[unit])])
    assert not torch.allclose(Editor(spec, sae).fit_transform(h), h, atol=1e-5)  # it fires here
    silenced = copy.deepcopy(sae)
    with torch.no_grad():
        silenced.W_enc[unit] = 0.0
        silenced.b_enc[unit] = -1e6
    assert not (silenced.encode(h)[:, unit] > 0).any()
    assert torch.allclose(Editor(spec, silenced).fit_transform(h), h, atol=1e-5)
    # The head on unedited h gives the model's own predictions.
    assert np.allclose(predict_proba_hidden(model, hidden.shifted),
                       predict_proba(model, planted.shifted), atol=1e-6)


def test_default_adapter_table_has_the_effect_columns(trained, planted) -> None:
    model, sae = trained
    table = default_adapter_effects(model, sae, planted, CFG, seed=0, random_draws=2)
    assert set(table.columns) >= EFFECT_COLUMNS
    assert set(table["mode"]) == {"applied"} and set(table["layer"]) == {"adapter"}
    no_edit = table[table["edit"] == "no_edit"].iloc[0]
    assert no_edit["flip_rate"] == 0 and no_edit["collateral_bacc_drop"] == 0
    flagged = table[table["edit"] == "ablate_flagged_site"]
    assert len(flagged) == 1 and flagged["missing_reason"].isna().all()  # the site is planted
    randoms = table[table["kind"] == "random"]
    assert len(randoms) == 2 and set(randoms["n_units"]) == set(flagged["n_units"])
    assert np.isfinite(table["site_leakage"].to_numpy(float)).all()
    # The planted site sits in the flagged units: ablating them lowers leakage more than chance.
    assert flagged["site_leakage"].iloc[0] < randoms["site_leakage"].mean()


def test_stage_writes_models_that_reload_and_the_adapter_table(planted, tmp_path: Path) -> None:
    out = tmp_path / "saeception"
    run_all(planted, CFG, out, "k")
    model, _ = load_cycle_model(out / "cycle_1" / "injected_seed0")
    assert predict_proba(model, planted.normal).shape == (30, 2)
    table = adapter_edit_table(planted, CFG, out)
    assert set(table["variant"]) == {"plain", "injected"} and set(table["model"]) == {
        "cycle_1/plain_seed0", "cycle_1/injected_seed0"}
    assert set(table.columns) >= EFFECT_COLUMNS
    headline = adapter_headline(table)
    assert set(headline) == {"plain", "injected"} and "no_edit" in headline["injected"]
    # Same settings and seed: the same numbers (each row's cost in seconds aside).
    again = adapter_edit_table(planted, CFG, out)
    assert (table["seconds"].dropna() >= 0).all()
    pd.testing.assert_frame_equal(table.drop(columns="seconds"), again.drop(columns="seconds"))


def test_spec_layer_and_model_from_file_or_command_line(tmp_path: Path) -> None:
    plain = EditSpec(name="p", ops=[Ablate(units=[1])])
    (tmp_path / "p.json").write_text(plain.to_json())
    adapter = EditSpec(name="a", layer="adapter", model="cycle_2/injected_seed0",
                       ops=[Ablate(units=[1])])
    (tmp_path / "a.json").write_text(adapter.to_json())
    assert EditSpec.from_file(tmp_path / "a.json") == adapter
    config_specs = [tmp_path / "p.json", tmp_path / "a.json"]
    assert [s.name for s in embedding_specs(read_specs(config_specs))] == ["p"]
    assert [s.name for s in adapter_specs(config_specs, [], None)] == ["a"]
    on_adapter = adapter_specs([], [tmp_path / "p.json"], "cycle_1/plain_seed0")
    assert [(s.name, s.layer, s.model) for s in on_adapter] == [("p", "adapter", "cycle_1/plain_seed0")]
    assert [s.name for s in command_line_embedding_specs([tmp_path / "p.json"])] == ["p"]
    with pytest.raises(ConfigError, match="adapter layer"):
        command_line_embedding_specs([tmp_path / "a.json"])
    (tmp_path / "e.json").write_text(
        '{"name": "e", "layer": "embedding", "ops": [{"op": "project_out", "vector": [1.0]}]}')
    with pytest.raises(ConfigError, match="layer: embedding"):
        adapter_specs([], [tmp_path / "e.json"], "cycle_1/plain_seed0")
    (tmp_path / "n.json").write_text(
        '{"name": "n", "layer": "adapter", "ops": [{"op": "ablate", "units": [1]}]}')
    with pytest.raises(ConfigError, match="no SAE-ception model"):
        adapter_specs([tmp_path / "n.json"], [], None)
    with pytest.raises(ValueError, match="layer: adapter"):
        EditSpec(name="x", model="cycle_1/plain_seed0", ops=[Ablate(units=[1])])
